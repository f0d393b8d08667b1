//! Money: amounts in US dollars kept as whole micro-dollars, so sums,
//! reservations and their settlements are exact (with `f64` a reservation
//! settled to its own value left residue like `3E-18` in stored totals).
//! On the wire and in stored JSON an amount is a number of dollars.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_DOLLAR: i64 = 1_000_000;

/// An amount of US dollars, in micro-dollars (millionths). Signed, so that
/// the difference of two amounts (a settlement's change) is one too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

impl Usd {
    pub const ZERO: Usd = Usd(0);

    pub const fn from_micros(micros: i64) -> Self {
        Usd(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// An amount given in dollars, to the nearest micro-dollar; `None` if it
    /// is not a finite number within ±9 billion dollars.
    pub fn from_dollars(dollars: f64) -> Option<Self> {
        let micros = (dollars * MICROS_PER_DOLLAR as f64).round();
        (micros.is_finite() && micros.abs() < 9e15).then_some(Usd(micros as i64))
    }

    /// The amount in dollars (for people and JSON; never for sums).
    pub fn dollars(self) -> f64 {
        self.0 as f64 / MICROS_PER_DOLLAR as f64
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0.saturating_add(o.0))
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, o: Usd) {
        *self = *self + o;
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, o: Usd) -> Usd {
        Usd(self.0.saturating_sub(o.0))
    }
}

impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Add::add)
    }
}

/// As people read it: cents from a dollar up; below, as many places as
/// the amount needs (up to millionths), so a small figure is not rounded
/// into a different one.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (whole, frac) = (abs / 1_000_000, abs % 1_000_000);
        if whole >= 1 {
            // Cents, rounded half up.
            let cents = (abs + 5_000) / 10_000;
            return write!(f, "{sign}${}.{:02}", cents / 100, cents % 100);
        }
        let digits = format!("{frac:06}");
        let digits = digits.trim_end_matches('0');
        if digits.is_empty() {
            write!(f, "{sign}$0")
        } else {
            write!(f, "{sign}$0.{digits}")
        }
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.dollars())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dollars = f64::deserialize(d)?;
        Usd::from_dollars(dollars)
            .ok_or_else(|| serde::de::Error::custom("an amount of dollars out of range"))
    }
}

/// What a model charges per million tokens, input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPrice {
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
}

impl TokenPrice {
    /// From dollars per million tokens; `None` if either is out of range.
    pub fn from_dollars(input: f64, output: f64) -> Option<Self> {
        Some(TokenPrice {
            input_per_mtok: Usd::from_dollars(input)?,
            output_per_mtok: Usd::from_dollars(output)?,
        })
    }

    /// What the tokens cost, rounded up to the micro-dollar (spending is
    /// overstated by less than a millionth of a dollar, never understated).
    pub fn cost(self, input_tokens: u64, output_tokens: u64) -> Usd {
        let per_mtok = i128::from(input_tokens) * i128::from(self.input_per_mtok.0)
            + i128::from(output_tokens) * i128::from(self.output_per_mtok.0);
        let micros = (per_mtok + 999_999).div_euclid(1_000_000);
        Usd(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exact_where_floats_are_not() {
        let tenth = Usd::from_dollars(0.1).unwrap();
        let total = tenth + tenth + tenth;
        assert_eq!(total, Usd::from_dollars(0.3).unwrap());
        // A reservation settled to its own amount leaves nothing.
        let worst = Usd::from_dollars(0.010_203).unwrap();
        assert_eq!((total + worst) - worst, total);
        assert_ne!(0.1 + 0.1 + 0.1, 0.3);
    }

    #[test]
    fn token_costs_round_up_to_the_micro_dollar() {
        let p = TokenPrice::from_dollars(0.075, 0.30).unwrap();
        // 10 input tokens at $0.075 per million cost 0.75 micro-dollars.
        assert_eq!(p.cost(10, 0), Usd::from_micros(1));
        assert_eq!(p.cost(1_000_000, 0), Usd::from_dollars(0.075).unwrap());
        let gpt4 = TokenPrice::from_dollars(30.0, 60.0).unwrap();
        assert_eq!(gpt4.cost(1000, 500), Usd::from_dollars(0.06).unwrap());
        assert_eq!(gpt4.cost(0, 0), Usd::ZERO);
    }

    #[test]
    fn amounts_read_as_people_write_them() {
        let show = |d: f64| Usd::from_dollars(d).unwrap().to_string();
        assert_eq!(show(20.0), "$20.00");
        assert_eq!(show(1.005), "$1.01");
        assert_eq!(show(0.000_15), "$0.00015");
        assert_eq!(show(0.5), "$0.5");
        assert_eq!(show(0.0), "$0");
    }

    #[test]
    fn json_carries_dollars() {
        let a = Usd::from_dollars(12.345_678).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "12.345678");
        assert_eq!(serde_json::from_str::<Usd>("12.345678").unwrap(), a);
        assert!(serde_json::from_str::<Usd>("1e300").is_err());
    }
}
