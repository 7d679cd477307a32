//! The caller's deadline, from `grpc-timeout`. tonic does not hand it to handlers and ignores a
//! malformed one; we parse it ourselves and refuse what is malformed.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// The call's timeout, if the caller set one. Format (gRPC over HTTP/2): 1 to 8 ASCII digits
/// and a unit, `H` `M` `S` `m` `u` or `n`.
pub fn timeout(metadata: &MetadataMap) -> Result<Option<Duration>> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let malformed = || {
        Error::invalid(
            "grpc-timeout",
            "must be 1 to 8 digits followed by a unit (H, M, S, m, u or n)",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(malformed());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: u64 = digits.parse().map_err(|_| malformed())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(malformed()),
    };
    Ok(Some(d))
}

/// When to give up on a call with this timeout. tonic (on both ends) cuts a call off at its
/// `grpc-timeout` with CANCELLED; answering a little earlier lets the caller read our
/// DEADLINE_EXCEEDED instead. The margin covers the trip back: 5% of the timeout, at most 20ms.
pub fn answer_before(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 20).min(Duration::from_millis(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<Duration>> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().expect("ascii"));
        timeout(&metadata)
    }

    #[test]
    fn well_formed_timeouts() {
        assert_eq!(parse("5S").ok().flatten(), Some(Duration::from_secs(5)));
        assert_eq!(
            parse("250m").ok().flatten(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse("2H").ok().flatten(), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse("99999999n").ok().flatten(),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(timeout(&MetadataMap::new()).ok().flatten(), None);
    }

    #[test]
    fn malformed_timeouts_are_refused() {
        for bad in [
            "",
            "S",
            "5",
            "5s",
            "-5S",
            "123456789S",
            "1.5S",
            "5 S",
            "abc",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
