//! Sizes as people write them and read them: one parser and one formatter for the CLI, the Python
//! binding and the remote crate, so that `--shard-size 1GB` and `shard_size="1GB"` are the same
//! number of bytes.
//!
//! The units are those of `dd` and of IEC 80000-13, case-insensitive: `KB`, `MB`, `GB`, `TB`, `PB`
//! are powers of 1000; `KiB`, `MiB`, `GiB`, `TiB`, `PiB` and the bare letters `K`, `M`, `G`, `T`,
//! `P` are powers of 1024; `B` or nothing is bytes.

use std::fmt;

/// A text that [`parse_size`] does not read as a number of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeError {
    text: String,
    reason: &'static str,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a size: {} (write a number and a unit: 200GiB or 200G for 200 x 2^30 \
             bytes, 200GB for 200 x 10^9, or plain bytes such as 4096)",
            self.text, self.reason
        )
    }
}

impl std::error::Error for SizeError {}

/// Reads `"2GiB"`, `"512M"`, `"1.5 gb"`, `"4096"` as a number of bytes (units in the module docs;
/// a fraction of a byte is dropped).
///
/// ```
/// use mmtensor_format::parse_size;
///
/// assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
/// assert_eq!(parse_size("1gib"), Ok(1 << 30));
/// assert_eq!(parse_size("1G"), Ok(1 << 30));
/// assert_eq!(parse_size("1.5 KiB"), Ok(1536));
/// assert!(parse_size("lots").is_err());
/// ```
///
/// # Errors
///
/// [`SizeError`] naming the text: no number, a negative or non-finite one, an unknown unit, or a
/// size past `u64::MAX`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let bad = |reason| SizeError {
        text: text.to_owned(),
        reason,
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let num: f64 = num.parse().map_err(|_| bad("its number does not parse"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        _ => {
            return Err(bad(
                "its unit is not one of B, KB/KiB/K, MB/MiB/M, GB/GiB/G, TB/TiB/T, PB/PiB/P",
            ))
        }
    };
    // Whole numbers are exact; a fraction goes through f64 (exact for every size below 2^53).
    if let Ok(whole) = num_as_whole(t.split_at(split).0) {
        return whole
            .checked_mul(scale)
            .ok_or_else(|| bad("it is more than 2^64 - 1 bytes"));
    }
    let bytes = num * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("it is more than 2^64 - 1 bytes"));
    }
    Ok(bytes as u64)
}

/// The number part as an exact integer, when it has no fraction.
fn num_as_whole(num: &str) -> Result<u64, ()> {
    if num.contains('.') {
        return Err(());
    }
    num.parse().map_err(|_| ())
}

/// `23707856` as `"22.6 MiB"`: below 1 KiB in bytes, else one decimal of the largest IEC unit
/// that keeps the number at least 1.
///
/// ```
/// use mmtensor_format::format_size;
///
/// assert_eq!(format_size(512), "512 B");
/// assert_eq!(format_size(1536), "1.5 KiB");
/// assert_eq!(format_size(3 << 30), "3.0 GiB");
/// ```
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_binary_units_case_insensitive() {
        for (text, want) in [
            ("4096", 4096),
            ("10b", 10),
            ("1KB", 1000),
            ("1kb", 1000),
            ("1KiB", 1024),
            ("1kib", 1024),
            ("1k", 1024),
            ("2 MB", 2_000_000),
            ("2MiB", 2 << 20),
            ("512m", 512 << 20),
            ("1GB", 1_000_000_000),
            ("1Gb", 1_000_000_000),
            ("1GiB", 1 << 30),
            ("1.5g", 3 << 29),
            ("3TB", 3_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1PiB", 1 << 50),
            ("16EiB", 0),
        ] {
            if text == "16EiB" {
                assert!(parse_size(text).is_err(), "{text}");
                continue;
            }
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "lots", "GiB", "-1GB", "1 GiBs", "1e9", "16384P", "nan"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn formatted_sizes_read_back_within_a_rounding() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
        let n = 23_707_856;
        let text = format_size(n);
        assert_eq!(text, "22.6 MiB");
        let back = parse_size(&text).unwrap();
        assert!(back.abs_diff(n) < (1 << 20) / 10);
    }
}
