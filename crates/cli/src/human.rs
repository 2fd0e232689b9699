//! Human-readable sizes, durations and rates.

/// Bytes as `"22.6 MiB"`: the one formatter of every interface, `mmtensor_format::format_size`.
pub use mmtensor_format::format_size as bytes;

/// Seconds as `"812 µs"`, `"12.3 ms"` or `"1.42 s"`.
pub fn duration(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// Bytes per second as decimal GB/s.
pub fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{:.2} GB/s", bytes as f64 / secs / 1e9)
}

/// Parses `"2GiB"`, `"512M"`, `"1GB"`, `"4096"` into bytes, as every interface does
/// (`mmtensor_format::parse_size`: KB = 10^3, KiB = K = 2^10, case-insensitive), for clap.
///
/// # Errors
/// A message naming the text when it is not a size.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    mmtensor_format::parse_size(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        // Regression (issue 22): `--shard-size 1GB` cut 2^30-byte shards, Python's 10^9.
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1gib"), Ok(1 << 30));
        assert!(parse_bytes("2 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}
