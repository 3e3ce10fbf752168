//! Test support: the shape of a JSON document as `path kind` lines, so that a test can
//! hold a file's key paths and value kinds (summary.json, lambda-storm.json) exactly.

use serde_json::Value;

/// The kind of a JSON value as the shape lines name it.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// `path kind` of every value under `value`: objects' keys joined with `.`, the
/// entries of the objects at the paths in `maps` as `*`, array elements as `[]`; each
/// path once.
pub fn shape(value: &Value, maps: &[&str], path: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| {
                let key = if maps.contains(&path) { "*" } else { k.as_str() };
                let p = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                (p, v)
            })
            .collect(),
        Value::Array(items) => items.iter().map(|v| (format!("{path}[]"), v)).collect(),
        _ => Vec::new(),
    };
    for (p, v) in children {
        let line = format!("{p} {}", kind(v));
        if !out.contains(&line) {
            out.push(line);
            shape(v, maps, &p, out);
        }
    }
}
