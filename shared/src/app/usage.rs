//! Workspace settings (monthly budget, prices) and the usage report.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, Utc};
use serde_json::{Value, json};

use super::{App, AppError};
use crate::domain::{ModelPrice, Usage, Usd, WorkspaceId, WorkspaceSettings};
use crate::dsl::{Path, ValidationError};

/// Most price entries a workspace may set.
const MAX_PRICES: usize = 200;
/// Longest range a usage report covers.
const MAX_REPORT_DAYS: i64 = 366;

fn amount(v: &Value, path: &Path, max: f64, errors: &mut Vec<ValidationError>) -> Option<f64> {
    match v.as_f64() {
        Some(x) if (0.0..=max).contains(&x) => Some(x),
        _ => {
            errors.push(ValidationError::new(
                path,
                format!("expected a number from 0 to {max}"),
            ));
            None
        }
    }
}

/// Parses a full settings document (what `PUT /v1/settings` takes).
fn parse_settings(body: &Value) -> Result<WorkspaceSettings, AppError> {
    let root = Path::root();
    let Value::Object(m) = body else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object such as {\"monthly_budget_usd\": 50, \"prices\": {}}"
                .into(),
        ));
    };
    let mut errors = Vec::new();
    for k in m.keys() {
        if k != "monthly_budget_usd" && k != "prices" {
            errors.push(ValidationError::new(
                &root.key(k),
                format!("unknown field `{k}`; expected `monthly_budget_usd` and `prices`"),
            ));
        }
    }
    let mut s = WorkspaceSettings::default();
    match m.get("monthly_budget_usd") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let at = root.key("monthly_budget_usd");
            s.monthly_budget_usd =
                amount(v, &at, crate::dsl::MAX_BUDGET_USD.dollars(), &mut errors)
                    .and_then(Usd::from_dollars);
        }
    }
    match m.get("prices") {
        None | Some(Value::Null) => {}
        Some(Value::Object(prices)) if prices.len() <= MAX_PRICES => {
            for (model, p) in prices {
                let at = root.key("prices").key(model);
                if model.is_empty() || model.len() > 128 {
                    errors.push(ValidationError::new(
                        &at,
                        "a model name (prefix) of 1-128 characters",
                    ));
                    continue;
                }
                let Value::Object(f) = p else {
                    errors.push(ValidationError::new(
                        &at,
                        "expected {\"input_per_mtok\": ..., \"output_per_mtok\": ...} (USD per million tokens)",
                    ));
                    continue;
                };
                if let Some(k) = f
                    .keys()
                    .find(|k| *k != "input_per_mtok" && *k != "output_per_mtok")
                {
                    errors.push(ValidationError::new(
                        &at.key(k),
                        format!(
                            "unknown field `{k}`; expected `input_per_mtok` and `output_per_mtok`"
                        ),
                    ));
                }
                let mut get = |k: &str| match f.get(k) {
                    Some(v) => amount(v, &at.key(k), 100_000.0, &mut errors),
                    None => {
                        errors.push(ValidationError::new(&at.key(k), format!("missing `{k}`")));
                        None
                    }
                };
                let (i, o) = (get("input_per_mtok"), get("output_per_mtok"));
                if let (Some(input_per_mtok), Some(output_per_mtok)) = (i, o) {
                    s.prices.insert(
                        model.clone(),
                        ModelPrice {
                            input_per_mtok,
                            output_per_mtok,
                        },
                    );
                }
            }
        }
        Some(Value::Object(_)) => errors.push(ValidationError::new(
            &root.key("prices"),
            format!("at most {MAX_PRICES} prices"),
        )),
        Some(_) => errors.push(ValidationError::new(
            &root.key("prices"),
            "expected an object of model-name prefix -> {\"input_per_mtok\", \"output_per_mtok\"}",
        )),
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(AppError::InvalidRequest(errors))
    }
}

fn parse_day(s: &str, name: &str) -> Result<NaiveDate, AppError> {
    let day: NaiveDate = s.parse().map_err(|_| {
        AppError::BadRequest(format!(
            "`{name}` must be a date such as 2026-01-31, not `{s}`"
        ))
    })?;
    if !(2000..=2999).contains(&day.year()) {
        return Err(AppError::BadRequest(format!(
            "`{name}` must be a date from the years 2000 to 2999, not `{s}`"
        )));
    }
    Ok(day)
}

fn usage_json(u: &Usage) -> serde_json::Map<String, Value> {
    match json!(u) {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// One report row per group: its usage with the group's key as `name`.
fn usage_rows<K: serde::Serialize>(groups: &BTreeMap<K, Usage>, name: &str) -> Vec<Value> {
    groups
        .iter()
        .map(|(k, u)| {
            let mut m = usage_json(u);
            m.insert(name.into(), json!(k));
            Value::Object(m)
        })
        .collect()
}

impl App {
    pub async fn get_settings(&self, ws: &WorkspaceId) -> Result<WorkspaceSettings, AppError> {
        Ok(self.stores.settings.get_settings(ws).await?)
    }

    /// Replaces the workspace's settings.
    pub async fn put_settings(
        &self,
        ws: &WorkspaceId,
        body: &Value,
    ) -> Result<WorkspaceSettings, AppError> {
        let s = parse_settings(body)?;
        self.stores.settings.put_settings(ws, &s).await?;
        Ok(s)
    }

    /// Tokens and cost per day and per workflow for `from..=to` (default:
    /// this calendar month, UTC), with the month's spending against its cap.
    pub async fn usage_report(
        &self,
        ws: &WorkspaceId,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Value, AppError> {
        let today = Utc::now().date_naive();
        let month_start = today.with_day(1).unwrap_or(today);
        let from = from
            .map(|f| parse_day(f, "from"))
            .transpose()?
            .unwrap_or(month_start);
        let to = to.map(|t| parse_day(t, "to")).transpose()?.unwrap_or(today);
        if to < from {
            return Err(AppError::BadRequest("`to` is before `from`".into()));
        }
        if (to - from).num_days() >= MAX_REPORT_DAYS {
            return Err(AppError::BadRequest(format!(
                "a report covers at most {MAX_REPORT_DAYS} days"
            )));
        }
        let rows = self.stores.usage.usage_by_day(ws, from, to).await?;
        let mut total = Usage::default();
        let mut by_day: BTreeMap<NaiveDate, Usage> = BTreeMap::new();
        let mut by_workflow: BTreeMap<String, Usage> = BTreeMap::new();
        for r in &rows {
            total.add(&r.usage);
            by_day.entry(r.day).or_default().add(&r.usage);
            by_workflow
                .entry(r.workflow_id.to_string())
                .or_default()
                .add(&r.usage);
        }
        let month: Usage = if from == month_start && to == today {
            total
        } else {
            let mut m = Usage::default();
            for r in self
                .stores
                .usage
                .usage_by_day(ws, month_start, today)
                .await?
            {
                m.add(&r.usage);
            }
            m
        };
        let settings = self.stores.settings.get_settings(ws).await?;
        let days = usage_rows(&by_day, "date");
        let workflows = usage_rows(&by_workflow, "workflow_id");
        Ok(json!({
            "from": from,
            "to": to,
            "total": total,
            "days": days,
            "workflows": workflows,
            "month": {
                "start": month_start,
                "spent_usd": month.cost_usd,
                "budget_usd": settings.monthly_budget_usd,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_field_by_field() {
        let ok = parse_settings(&json!({
            "monthly_budget_usd": 20,
            "prices": {"llama3": {"input_per_mtok": 0.05, "output_per_mtok": 0.1}}
        }))
        .unwrap();
        assert_eq!(ok.monthly_budget_usd, Usd::from_dollars(20.0));
        assert_eq!(ok.prices["llama3"].output_per_mtok, 0.1);
        let Err(AppError::InvalidRequest(errs)) = parse_settings(&json!({
            "monthly_budget_usd": -1,
            "prices": {"m": {"input_per_mtok": "1"}},
            "extra": 1
        })) else {
            panic!("expected errors");
        };
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"$.monthly_budget_usd"), "{paths:?}");
        assert!(paths.contains(&"$.prices.m.input_per_mtok"), "{paths:?}");
        assert!(paths.contains(&"$.prices.m.output_per_mtok"), "{paths:?}");
        assert!(paths.contains(&"$.extra"), "{paths:?}");
    }
}
