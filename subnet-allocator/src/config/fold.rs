//! flannel reads its config with Go's `encoding/json`, which matches object
//! keys to fields case-insensitively: `"enableIPv4"`, `"ipv6network"` and
//! `"EnableIPv4"` are one field. Keys are folded to twill's spelling before
//! the typed parse, so every config flannel accepts parses here too.

use serde_json::{Map, Value};

use super::ConfigError;

/// Top-level fields, in their canonical spelling.
const TOP: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
];

/// `Backend` fields, in their canonical spelling.
const BACKEND: &[&str] = &["Type", "VNI", "Port", "MTU", "DirectRouting", "GBP"];

/// `value` with the keys of the top level and of `Backend` in canonical
/// spelling; other keys (unknown to twill, ignored like flannel does) stay.
/// A field spelled twice (`"Network"` and `"network"`) is refused, naming
/// it: which one Go keeps depends on the order, which is easy to miss.
pub(super) fn fold_keys(value: Value) -> Result<Value, ConfigError> {
    let Value::Object(top) = value else {
        return Ok(value);
    };
    let mut top = fold_object(top, TOP, "")?;
    if let Some(Value::Object(b)) = top.get_mut("Backend") {
        *b = fold_object(std::mem::take(b), BACKEND, "Backend.")?;
    }
    Ok(Value::Object(top))
}

fn fold_object(
    obj: Map<String, Value>,
    names: &[&str],
    path: &str,
) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (k, v) in obj {
        let key = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(&k))
            .map_or(k, |n| (*n).to_string());
        if out.contains_key(&key) {
            return Err(ConfigError::DuplicateField(format!("{path}{key}")));
        }
        out.insert(key, v);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_fold_to_the_canonical_spelling() {
        let v = json!({"enableipv4": false, "IPV6NETWORK": "fd00::/48",
                       "backend": {"type": "vxlan", "vni": 4}, "Other": 1});
        let f = fold_keys(v).unwrap();
        assert_eq!(
            f,
            json!({"EnableIPv4": false, "IPv6Network": "fd00::/48",
                   "Backend": {"Type": "vxlan", "VNI": 4}, "Other": 1})
        );
    }

    #[test]
    fn a_field_given_twice_is_refused_by_name() {
        let e = fold_keys(json!({"Network": "10.0.0.0/8", "network": "10.1.0.0/16"})).unwrap_err();
        assert!(
            e.to_string().contains("field Network is given twice"),
            "{e}"
        );
        let e = fold_keys(json!({"Backend": {"VNI": 1, "vni": 2}})).unwrap_err();
        assert!(e.to_string().contains("Backend.VNI"), "{e}");
    }

    #[test]
    fn non_objects_pass_through() {
        assert_eq!(fold_keys(json!([1])).unwrap(), json!([1]));
        assert_eq!(
            fold_keys(json!({"Backend": "x"})).unwrap(),
            json!({"Backend": "x"})
        );
    }
}
