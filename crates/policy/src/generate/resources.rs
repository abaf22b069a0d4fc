//! A container's `resources.limits` as policy bounds: Kubernetes quantities
//! (`64Mi`, `1G`, `500m`, `0.5`, `1e3`) parsed exactly, rounded up.

use serde_json::Value;

use super::GenerateError;
use super::k8s::field;
use crate::model::ResourcePolicy;

/// Longest quantity text accepted.
const MAX_QUANTITY_CHARS: usize = 64;

/// `ceil(quantity × 10^scale)`: the quantity `text` in units of 10^-scale
/// (scale 0: bytes; scale 3: thousandths of a CPU). Refuses negative
/// values, malformed text and values beyond `u64`.
pub(crate) fn quantity_scaled(text: &str, scale: i32) -> Result<u64, String> {
    if text.is_empty() || text.len() > MAX_QUANTITY_CHARS {
        return Err(format!(
            "{text:?} is not a Kubernetes quantity (1 to {MAX_QUANTITY_CHARS} characters)"
        ));
    }
    let bad = || format!("{text:?} is not a Kubernetes quantity (e.g. 128Mi, 1G, 500m, 0.5)");
    let body = text.strip_prefix('+').unwrap_or(text);
    if body.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let (mult, exp): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            (1, e.parse::<i32>().map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    };
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(format!("{text:?} has too many digits"));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let value = mantissa
        .checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    let e = exp + scale - frac.len() as i32;
    let too_large = || format!("{text:?} is too large");
    let scaled = if e >= 0 {
        10u128
            .checked_pow(e as u32)
            .and_then(|p| value.checked_mul(p))
            .ok_or_else(too_large)?
    } else if -e > 38 {
        u128::from(value > 0)
    } else {
        value.div_ceil(10u128.pow((-e) as u32))
    };
    u64::try_from(scaled).map_err(|_| too_large())
}

/// The quantity at `v` (a YAML string or number).
fn quantity(v: &Value, path: &str, scale: i32) -> Result<u64, GenerateError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(field(
                path,
                "expected a quantity (a string such as 128Mi, or a number)",
            ));
        }
    };
    let q = quantity_scaled(text.trim(), scale).map_err(|e| field(path, e))?;
    if q == 0 {
        return Err(field(path, format!("{text:?} is zero: not a limit")));
    }
    Ok(q)
}

/// The bounds `resources.limits` of container `c` sets (`None`: no limits).
/// `requests` only schedule and bound nothing; other resources (extended
/// resources, `ephemeral-storage`, `claims`) are noted as unsupported.
pub(crate) fn resource_policy(
    c: &Value,
    path: &str,
    unsupported: &mut Vec<String>,
) -> Result<Option<ResourcePolicy>, GenerateError> {
    let Some(res) = c.get("resources") else {
        return Ok(None);
    };
    let path = format!("{path}.resources");
    let Some(obj) = res.as_object() else {
        return Err(field(path, "expected a mapping"));
    };
    for k in obj.keys() {
        if k != "limits" && k != "requests" {
            unsupported.push(format!("{path}.{k}: not modelled by the policy"));
        }
    }
    let Some(limits) = obj.get("limits") else {
        return Ok(None);
    };
    let Some(limits) = limits.as_object() else {
        return Err(field(format!("{path}.limits"), "expected a mapping"));
    };
    let mut p = ResourcePolicy::default();
    for (k, v) in limits {
        let at = format!("{path}.limits.{k}");
        match k.as_str() {
            "memory" => p.memory_max = Some(quantity(v, &at, 0)?),
            "cpu" => p.cpu_millis = Some(quantity(v, &at, 3)?),
            // The container's `gpus` (k8s.rs `container_gpus`): attested
            // GPUs, not a cgroup limit.
            "nvidia.com/gpu" => {}
            _ => unsupported.push(format!("{at}: not enforced by veil (memory and cpu are)")),
        }
    }
    Ok((p != ResourcePolicy::default()).then_some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kubernetes_quantities_parse_exactly_and_round_up() {
        for (text, scale, want) in [
            ("64Mi", 0, 64 << 20),
            ("1Gi", 0, 1 << 30),
            ("1G", 0, 1_000_000_000),
            ("128974848", 0, 128_974_848),
            ("129e6", 0, 129_000_000),
            ("123Mi", 0, 123 << 20),
            ("0.5Gi", 0, 1 << 29),
            ("500m", 3, 500),
            ("1", 3, 1000),
            ("0.5", 3, 500),
            ("1.5", 3, 1500),
            ("100m", 0, 1), // 0.1 byte rounds up
            ("1u", 3, 1),
            ("+2", 3, 2000),
            (".5", 3, 500),
            ("2k", 0, 2000),
        ] {
            assert_eq!(quantity_scaled(text, scale), Ok(want), "{text}");
        }
        for bad in [
            "", "-1", "1Xi", "1.2.3", "Mi", "1e", "1e1000", "abc", "1 Mi",
        ] {
            assert!(quantity_scaled(bad, 0).is_err(), "{bad:?} accepted");
        }
        assert!(
            quantity_scaled("100Ei", 0)
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn limits_become_bounds_requests_do_not() {
        let c: Value = serde_json::json!({
            "resources": {"limits": {"memory": "64Mi", "cpu": "250m", "nvidia.com/gpu": 1,
                                     "example.com/fpga": 1},
                          "requests": {"memory": "32Mi"}}
        });
        let mut unsupported = Vec::new();
        let p = resource_policy(&c, "c", &mut unsupported).unwrap().unwrap();
        assert_eq!(p.memory_max, Some(64 << 20));
        assert_eq!(p.cpu_millis, Some(250));
        assert_eq!(unsupported.len(), 1, "{unsupported:?}");
        let c: Value = serde_json::json!({"resources": {"requests": {"memory": "32Mi"}}});
        assert_eq!(resource_policy(&c, "c", &mut unsupported).unwrap(), None);
        let c: Value = serde_json::json!({"resources": {"limits": {"memory": "0"}}});
        let e = resource_policy(&c, "c", &mut unsupported)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.resources.limits.memory") && e.contains("zero"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_quantities_never_panic(s in "\\PC{0,70}", scale in 0i32..4) {
            let _ = quantity_scaled(&s, scale);
        }

        #[test]
        fn binary_suffixes_scale_exactly(n in 0u64..(1 << 30)) {
            prop_assert_eq!(quantity_scaled(&format!("{n}Mi"), 0), Ok(n << 20));
            prop_assert_eq!(quantity_scaled(&format!("{n}m"), 3), Ok(n));
        }
    }
}
