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

/// The gateway follows the client, as RabbitMQ's STOMP plugin does (it
/// answers `heart-beat:cx,cy` with `cy,cx`): it sends every `cy` ms
/// (never more often than `min_send_ms`, never less often than
/// `offer_send_ms` when that is not 0) and asks the client for a heart-beat
/// every `cx` ms (never more often than `want_receive_ms`). A direction the
/// client leaves at 0 stays off, and so does a direction whose setting is
/// turned off (`want_receive_ms = 0`).
pub fn negotiate(client: (u64, u64), config: &HeartbeatConfig) -> Heartbeats {
    let (cx, cy) = client;
    let send = if cy == 0 {
        0
    } else {
        let floor = cy.max(config.min_send_ms).max(1);
        match config.offer_send_ms {
            0 => floor,
            cap => floor.min(cap.max(config.min_send_ms)),
        }
    };
    let receive = if cx == 0 || config.want_receive_ms == 0 {
        0
    } else {
        cx.max(config.want_receive_ms)
    };
    let send_every = (send != 0).then(|| Duration::from_millis(send));
    let expect_within = (receive != 0)
        .then(|| Duration::from_millis(((receive as f64) * config.grace_factor) as u64));
    Heartbeats {
        server_header: (send, receive),
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
            want_receive_ms: 1000,
            offer_send_ms: 0,
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
    fn the_gateway_follows_the_client() {
        let hb = negotiate((0, 0), &cfg());
        assert_eq!(hb.send_every, None);
        assert_eq!(hb.expect_within, None);
        assert_eq!(hb.server_header, (0, 0));
        // What RabbitMQ's Web-STOMP answers to 1000,1000: 1000,1000.
        let hb = negotiate((1000, 1000), &cfg());
        assert_eq!(hb.server_header, (1000, 1000));
        assert_eq!(hb.send_every, Some(Duration::from_millis(1000)));
        assert_eq!(hb.expect_within, Some(Duration::from_millis(2000)));
        // cx,cy is answered cy,cx.
        let hb = negotiate((4000, 20_000), &cfg());
        assert_eq!(hb.server_header, (20_000, 4000));
        assert_eq!(hb.send_every, Some(Duration::from_millis(20_000)));
        assert_eq!(hb.expect_within, Some(Duration::from_millis(8000)));
    }

    #[test]
    fn sending_is_clamped_to_the_minimum_and_the_cap() {
        let hb = negotiate((0, 20), &cfg());
        assert_eq!(hb.send_every, Some(Duration::from_millis(1000)));
        assert_eq!(hb.server_header, (1000, 0));
        let mut c = cfg();
        c.offer_send_ms = 10_000;
        let hb = negotiate((0, 60_000), &c);
        assert_eq!(hb.server_header, (10_000, 0));
        // Receiving is bounded below too, and can be turned off.
        let hb = negotiate((100, 0), &cfg());
        assert_eq!(hb.server_header, (0, 1000));
        c.want_receive_ms = 0;
        assert_eq!(negotiate((100, 0), &c).expect_within, None);
    }
}
