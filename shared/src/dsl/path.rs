//! Locations inside a definition, printed as JSONPath (`$.steps[1].type`) and
//! JSON Pointer (`/steps/1/type`).

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Path(Vec<Segment>);

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Path {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    pub fn json_path(&self) -> String {
        let mut s = String::from("$");
        for seg in &self.0 {
            match seg {
                Segment::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    s.push('.');
                    s.push_str(k);
                }
                Segment::Key(k) => {
                    s.push_str(&format!("[{}]", serde_json::Value::from(k.as_str())))
                }
                Segment::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }

    pub fn pointer(&self) -> String {
        let mut s = String::new();
        for seg in &self.0 {
            s.push('/');
            match seg {
                Segment::Key(k) => s.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Segment::Index(i) => s.push_str(&i.to_string()),
            }
        }
        s
    }
}

/// One problem found in a definition or an input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidationError {
    /// JSONPath of the offending value, e.g. `$.steps[1].depends_on[0]`.
    pub path: String,
    /// The same place as a JSON Pointer (RFC 6901).
    pub pointer: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.json_path(),
            pointer: path.pointer(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
