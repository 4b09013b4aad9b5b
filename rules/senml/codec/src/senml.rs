//! SenML packs (RFC 8428): CBOR labels to JSON labels, resolution of base values, and the
//! two output shapes.

use crate::value::Value;

/// SenML+CBOR integer labels and their JSON names (RFC 8428 §6, Table 4).
const LABELS: &[(i128, &str)] = &[
    (-1, "bver"),
    (-2, "bn"),
    (-3, "bt"),
    (-4, "bu"),
    (-5, "bv"),
    (-6, "bs"),
    (0, "n"),
    (1, "u"),
    (2, "v"),
    (3, "vs"),
    (4, "vb"),
    (5, "s"),
    (6, "t"),
    (7, "ut"),
    (8, "vd"),
];

/// The labels that carry a record's value.
const VALUE_LABELS: &[&str] = &["v", "vs", "vb", "vd"];

/// A record: labels and values, labels as in SenML+JSON.
pub type Record = Vec<(String, Value)>;

/// Reads a pack (an array of maps) from a decoded SenML+JSON or SenML+CBOR payload, turning
/// CBOR's integer labels into their names.
pub fn records(pack: Value) -> Result<Vec<Record>, String> {
    let Value::Array(items) = pack else { return Err("a SenML pack is an array of records".into()) };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Map(entries) = item else { return Err(format!("record {i} is not a map")) };
            entries
                .into_iter()
                .map(|(k, v)| match k {
                    Value::Text(label) => Ok((label, v)),
                    Value::Int(n) => LABELS
                        .iter()
                        .find(|(id, _)| *id == n)
                        .map(|(_, name)| ((*name).to_string(), v))
                        .ok_or_else(|| format!("record {i}: unknown label {n}")),
                    _ => Err(format!("record {i}: a label is neither text nor a number")),
                })
                .collect()
        })
        .collect()
}

fn get<'a>(record: &'a Record, label: &str) -> Option<&'a Value> {
    record.iter().find(|(k, _)| k == label).map(|(_, v)| v)
}

fn add(base: Option<&Value>, value: Option<&Value>) -> Option<Value> {
    match (base, value) {
        (None, v) => v.cloned(),
        (Some(b), None) => Some(b.clone()),
        (Some(Value::Int(a)), Some(Value::Int(b))) => {
            Some(a.checked_add(*b).map_or(Value::Float(*a as f64 + *b as f64), Value::Int))
        }
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => Some(Value::Float(a + b)),
            _ => Some(b.clone()),
        },
    }
}

/// Resolves a pack (RFC 8428 §4.6): base name, time, unit, value and sum are applied to every
/// record and dropped; relative times stay relative. Other labels are kept.
pub fn resolve(records: Vec<Record>) -> Result<Vec<Record>, String> {
    let mut base: Record = Vec::new();
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.into_iter().enumerate() {
        for (k, v) in &record {
            if k.starts_with('b') && k != "bver" {
                base.retain(|(bk, _)| bk != k);
                base.push((k.clone(), v.clone()));
            }
        }
        let text = |v: Option<&Value>| match v {
            Some(Value::Text(s)) => s.clone(),
            _ => String::new(),
        };
        let name = format!("{}{}", text(get(&base, "bn")), text(get(&record, "n")));
        if name.is_empty() {
            return Err(format!("record {i} has no name (n or bn)"));
        }
        let mut resolved: Record = vec![("n".into(), Value::Text(name))];
        if let Some(u) = get(&record, "u").or_else(|| get(&base, "bu")) {
            resolved.push(("u".into(), u.clone()));
        }
        if get(&record, "v").is_some() {
            resolved.extend(add(get(&base, "bv"), get(&record, "v")).map(|v| ("v".into(), v)));
        }
        for label in ["vs", "vb", "vd"] {
            resolved.extend(get(&record, label).map(|v| (label.to_string(), v.clone())));
        }
        if get(&record, "s").is_some() {
            resolved.extend(add(get(&base, "bs"), get(&record, "s")).map(|v| ("s".into(), v)));
        }
        resolved.extend(add(get(&base, "bt"), get(&record, "t")).map(|v| ("t".into(), v)));
        for (k, v) in record {
            let known = matches!(k.as_str(), "n" | "u" | "v" | "vs" | "vb" | "vd" | "s" | "t") || k.starts_with('b');
            if !known {
                resolved.push((k, v));
            }
        }
        out.push(resolved);
    }
    Ok(out)
}

/// The pack as a JSON array of records (SenML+JSON).
pub fn to_records_json(records: &[Record]) -> String {
    let pack = Value::Array(
        records
            .iter()
            .map(|r| Value::Map(r.iter().map(|(k, v)| (Value::Text(k.clone()), v.clone())).collect()))
            .collect(),
    );
    pack.to_json()
}

/// A resolved pack as one JSON object `{"name": value, …}` (the last record of a name wins;
/// a record with only a sum gives the sum). Times and units are dropped.
pub fn to_object_json(records: &[Record]) -> String {
    let mut object: Vec<(Value, Value)> = Vec::new();
    for record in records {
        let Some(Value::Text(name)) = get(record, "n") else { continue };
        let Some(value) = VALUE_LABELS.iter().chain(["s"].iter()).find_map(|l| get(record, l)) else { continue };
        let key = Value::Text(name.clone());
        object.retain(|(k, _)| *k != key);
        object.push((key, value.clone()));
    }
    Value::Map(object).to_json()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::json;

    fn resolved(text: &str) -> String {
        to_records_json(&resolve(records(json::parse(text.as_bytes()).unwrap()).unwrap()).unwrap())
    }

    #[test]
    fn rfc8428_base_values_resolve() {
        // RFC 8428 §5.1.2 (multiple datapoints) and §4.6.
        let pack = r#"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},{"u":"lon","v":24.30621},{"n":"x","t":60,"v":1}]"#;
        assert_eq!(
            resolved(pack),
            r#"[{"n":"urn:dev:ow:10e2073a01080063:","u":"%RH","v":20,"t":1320067464.0},{"n":"urn:dev:ow:10e2073a01080063:","u":"lon","v":24.30621,"t":1320067464.0},{"n":"urn:dev:ow:10e2073a01080063:x","u":"%RH","v":1,"t":1320067524.0}]"#
        );
        assert_eq!(
            resolved(r#"[{"bn":"d/","bv":10,"n":"a","v":1},{"n":"b","vs":"on","x":1}]"#),
            r#"[{"n":"d/a","v":11},{"n":"d/b","vs":"on","x":1}]"#
        );
    }

    #[test]
    fn a_record_without_a_name_is_refused() {
        assert_eq!(
            resolve(records(json::parse(br#"[{"v":1}]"#).unwrap()).unwrap()).unwrap_err(),
            "record 0 has no name (n or bn)"
        );
        assert!(records(json::parse(br#"{"v":1}"#).unwrap()).is_err());
        assert!(records(json::parse(b"[1]").unwrap()).is_err());
    }

    #[test]
    fn the_object_shape_maps_names_to_values() {
        let recs = resolve(
            records(
                json::parse(br#"[{"bn":"d.","n":"temp","v":21.5},{"n":"on","vb":true},{"n":"temp","v":22}]"#).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(to_object_json(&recs), r#"{"d.on":true,"d.temp":22}"#);
    }
}
