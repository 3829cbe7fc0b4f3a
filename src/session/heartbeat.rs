//! Heart-beat negotiation (STOMP 1.1+, section "Heart-beating").
//!
//! The client says `heart-beat:cx,cy`: it can send every `cx` ms and wants to
//! receive every `cy` ms. The gateway offers `sx,sy` the same way. Each
//! direction is on only when both sides want it, at the slower of the two.

use std::time::Duration;

use crate::config::HeartbeatConfig;

/// Parses `cx,cy`; `None` when malformed.
pub fn parse(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Result of a negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeats {
    /// What the gateway writes in CONNECTED's `heart-beat`.
    pub server_header: (u64, u64),
    pub send_every: Option<Duration>,
    pub expect_within: Option<Duration>,
}

pub fn negotiate(client: (u64, u64), config: &HeartbeatConfig) -> Heartbeats {
    let (cx, cy) = client;
    let sx = config.offer_send_ms;
    let sy = config.want_receive_ms;
    let send_every =
        (sx != 0 && cy != 0).then(|| Duration::from_millis(sx.max(cy).max(config.min_send_ms)));
    let expect_within = (sy != 0 && cx != 0)
        .then(|| Duration::from_millis(((sy.max(cx) as f64) * config.grace_factor) as u64));
    Heartbeats {
        server_header: (sx, sy),
        send_every,
        expect_within,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HeartbeatConfig {
        HeartbeatConfig {
            min_send_ms: 1000,
            want_receive_ms: 10_000,
            offer_send_ms: 10_000,
            grace_factor: 2.0,
        }
    }

    #[test]
    fn parse_accepts_pairs_only() {
        assert_eq!(parse("0,0"), Some((0, 0)));
        assert_eq!(parse("10000, 4000"), Some((10_000, 4000)));
        assert_eq!(parse("10000"), None);
        assert_eq!(parse("a,b"), None);
    }

    #[test]
    fn each_direction_needs_both_sides() {
        let hb = negotiate((0, 0), &cfg());
        assert_eq!(hb.send_every, None);
        assert_eq!(hb.expect_within, None);
        let hb = negotiate((4000, 20_000), &cfg());
        assert_eq!(hb.send_every, Some(Duration::from_millis(20_000)));
        // client sends every 4 s, gateway wants 10 s: slower wins, times grace.
        assert_eq!(hb.expect_within, Some(Duration::from_millis(20_000)));
        assert_eq!(hb.server_header, (10_000, 10_000));
    }

    #[test]
    fn sending_is_clamped_to_the_minimum() {
        let mut c = cfg();
        c.offer_send_ms = 10;
        let hb = negotiate((0, 20), &c);
        assert_eq!(hb.send_every, Some(Duration::from_millis(1000)));
    }
}
