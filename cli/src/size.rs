//! Human sizes on the command line: `--mem 256M`, `--disk 1.5G`.
//!
//! Units are binary (K = KiB, M = MiB, G = GiB, T = TiB), as `docker run --memory` reads them;
//! a trailing `B` or `iB` is accepted (`256MiB`, `256MB`), and a bare number is MiB, Mesos's
//! unit for `mem` and `disk`.

/// Why a size could not be parsed; the message names the input and the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {problem} (examples: 512M, 1.5G, 100MiB; a bare number is MiB)")]
pub struct SizeError {
    input: String,
    problem: &'static str,
}

/// Parses a size into bytes.
///
/// # Errors
/// An empty input, a missing or negative number, an unknown unit, or a size over 2^63 bytes.
pub fn parse_bytes(input: &str) -> Result<u64, SizeError> {
    let err = |problem| SizeError {
        input: input.to_string(),
        problem,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let value: f64 = number.parse().map_err(|_| err("the number is malformed"))?;
    let unit = unit.trim();
    let stem = unit
        .strip_suffix("iB")
        .or_else(|| unit.strip_suffix("ib"))
        .or_else(|| unit.strip_suffix(['B', 'b']))
        .unwrap_or(unit);
    let multiplier: f64 = match stem {
        "" if unit.is_empty() => 1024.0 * 1024.0,
        "" => 1.0, // "B" alone: bytes
        "k" | "K" => 1024.0,
        "m" | "M" => 1024.0 * 1024.0,
        "g" | "G" => 1024.0 * 1024.0 * 1024.0,
        "t" | "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err("the unit is not one of B, K, M, G, T")),
    };
    let bytes = value * multiplier;
    if bytes >= 9.2e18 {
        return Err(err("it is too large"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes.round() as u64)
}

/// Parses a size into Mesos's MB unit (MiB), for the `mem` and `disk` resources.
///
/// # Errors
/// As [`parse_bytes`].
pub fn parse_mb(input: &str) -> Result<f64, SizeError> {
    #[allow(clippy::cast_precision_loss)]
    Ok(parse_bytes(input)? as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_style_sizes() {
        assert_eq!(parse_bytes("256M").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("256mb").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096B").unwrap(), 4096);
        assert_eq!(parse_bytes("64").unwrap(), 64 << 20);
        assert!((parse_mb("1G").unwrap() - 1024.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_malformed_sizes_naming_them() {
        let e = parse_bytes("12XB").unwrap_err().to_string();
        assert!(e.contains("\"12XB\"") && e.contains("unit"), "{e}");
        assert!(parse_bytes("").unwrap_err().to_string().contains("number"));
        assert!(parse_bytes("-5M").is_err());
        assert!(parse_bytes("1.2.3M").is_err());
        assert!(parse_bytes("99999999999T")
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }
}
