//! Wall-clock time for the sans-IO parts that take `now` (certificate validity windows).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 for a clock set before 1970 (every certificate then reads as
/// not yet valid, rather than the process panicking).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
