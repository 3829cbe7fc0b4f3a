//! How a plane queue is bound for one exchange, so that a replica's binding
//! count need not grow with the number of topics it serves.
//!
//! With one binding per distinct key (`per-key`, the default), a broker
//! restart re-binds every key of every replica, at the broker's pace (about
//! 1,500 binds/s here): 1.5M bindings are 16 minutes of missed messages.
//! Two other modes bound that:
//!
//! - `wildcard`: one *catch-all* binding per exchange on the replica's plane
//!   queue (`#` on a topic exchange, any key on a fanout one). The queue
//!   receives all of the exchange's messages and the gateway's matcher
//!   ([`super::matcher`], RabbitMQ's rules) keeps those a local
//!   subscription's own binding key selects, so clients see exactly what
//!   per-key bindings would give them; what no local key matches is dropped
//!   (`stompgate_plane_deliveries_total{result="unmatched"}`). Direct
//!   exchanges have no catch-all binding and stay per-key.
//! - `auto`: wildcard while the exchange's whole rate (measured on the
//!   catch-all) is at most `amqp.auto_max_rate`, per-key once it goes above
//!   (for the life of the queue). After a queue is declared again (a broker
//!   restart) an `auto` exchange starts on its catch-all again: every local
//!   subscription is served after one bind, and the keys are bound behind it
//!   if the rate says so.
//!
//! All bindings of a wildcard or auto exchange live on one plane queue
//! (chosen by the exchange's name), which is what makes a switch exact: a
//! queue holds a message once however many of its bindings match it, so
//! while the catch-all and the keys are both bound nothing is received
//! twice, and nothing is lost because the old bindings go only once the new
//! ones are confirmed (to per-key: keys bound, then the catch-all unbound; to
//! wildcard: catch-all bound, then the keys unbound). One queue also keeps
//! each topic's order.
//!
//! This module is the bookkeeping only (pure, no I/O); [`super::plane`]
//! runs the binds it asks for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::matcher::ExchangeKind;
pub use crate::config::BindingMode;

/// Which mode each exchange gets (from `[amqp]`).
#[derive(Debug, Clone)]
pub struct BindingPolicy {
    /// For topic and fanout exchanges not listed below.
    pub default: BindingMode,
    pub wildcard: Vec<String>,
    pub per_key: Vec<String>,
    /// `auto`: messages per second of one exchange above which it is bound
    /// per key.
    pub auto_max_rate: f64,
    /// `auto`: the window the rate is measured over.
    pub auto_window: Duration,
}

impl Default for BindingPolicy {
    fn default() -> Self {
        BindingPolicy {
            default: BindingMode::PerKey,
            wildcard: Vec::new(),
            per_key: Vec::new(),
            auto_max_rate: 200.0,
            auto_window: Duration::from_secs(2),
        }
    }
}

impl BindingPolicy {
    /// The mode of `exchange`, of type `kind`.
    pub fn mode(&self, exchange: &str, kind: ExchangeKind) -> BindingMode {
        if kind == ExchangeKind::Direct || self.per_key.iter().any(|e| e == exchange) {
            BindingMode::PerKey
        } else if self.wildcard.iter().any(|e| e == exchange) {
            BindingMode::Wildcard
        } else {
            self.default
        }
    }
}

/// The catch-all binding key of an exchange type (`None`: it has none).
pub fn catch_all_key(kind: ExchangeKind) -> Option<&'static str> {
    match kind {
        ExchangeKind::Topic => Some("#"),
        ExchangeKind::Fanout => Some(""),
        ExchangeKind::Direct => None,
    }
}

/// What one plane queue binds for one wildcard or auto exchange. Per-key
/// exchanges have no `Cover`: their keys are their bindings.
#[derive(Debug)]
pub struct Cover {
    pub mode: BindingMode,
    pub catch_all: &'static str,
    /// The catch-all binding is wanted.
    pub wildcard: bool,
    /// Each key's own binding is wanted.
    pub per_key: bool,
    /// Where the switch goes: the catch-all alone (true) or the keys alone.
    target_wildcard: bool,
    window_start: Instant,
    received: u64,
}

/// What a change of a [`Cover`] asks of the binder.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Bind every key (they are wanted now).
    BindKeys,
    /// Unbind every key bound (the catch-all serves them).
    UnbindKeys,
    /// Unbind the catch-all (the keys serve).
    UnbindCatchAll,
}

impl Cover {
    /// A new cover starts on its catch-all (`None` for a per-key exchange).
    pub fn new(mode: BindingMode, kind: ExchangeKind, now: Instant) -> Option<Cover> {
        if mode == BindingMode::PerKey {
            return None;
        }
        Some(Cover {
            mode,
            catch_all: catch_all_key(kind)?,
            wildcard: true,
            per_key: false,
            target_wildcard: true,
            window_start: now,
            received: 0,
        })
    }

    /// `auto` and still measuring the exchange's rate.
    pub fn measuring(&self) -> bool {
        self.mode == BindingMode::Auto && self.target_wildcard && self.wildcard
    }

    /// Whether the binding `key` of this exchange is wanted on the broker,
    /// `has_key` telling whether a local subscription uses that key.
    pub fn wants(&self, key: &str, has_key: bool) -> bool {
        (self.wildcard && key == self.catch_all) || (self.per_key && has_key)
    }

    /// The queue was declared again (its bindings are gone): `auto` starts
    /// on the catch-all again and measures anew.
    pub fn restart(&mut self, now: Instant) {
        if self.mode == BindingMode::Auto || self.target_wildcard {
            self.wildcard = true;
            self.per_key = false;
            self.target_wildcard = true;
        } else {
            // Fell back to per-key (catch-all refused): stays there.
            self.wildcard = false;
            self.per_key = true;
        }
        self.window_start = now;
        self.received = 0;
    }

    /// Counts one message received through the catch-all; in `auto`, once
    /// the window's rate is above `max_rate`, starts the switch to per-key.
    pub fn observe(&mut self, now: Instant, window: Duration, max_rate: f64) -> Step {
        if !self.measuring() {
            return Step::Nothing;
        }
        self.received += 1;
        let elapsed = now.saturating_duration_since(self.window_start);
        let over = self.received as f64 > max_rate * window.as_secs_f64();
        if over && elapsed < window {
            // Already more than the window may hold: no need to wait.
            return self.go_per_key();
        }
        if elapsed >= window {
            let rate = self.received as f64 / elapsed.as_secs_f64().max(1e-3);
            self.window_start = now;
            self.received = 0;
            if rate > max_rate {
                return self.go_per_key();
            }
        }
        Step::Nothing
    }

    /// Starts the switch to one binding per key (the catch-all stays until
    /// they are all bound).
    pub fn go_per_key(&mut self) -> Step {
        self.target_wildcard = false;
        if self.per_key {
            return Step::Nothing;
        }
        self.per_key = true;
        Step::BindKeys
    }

    /// The catch-all is bound: a switch to it ends by unbinding the keys.
    pub fn catch_all_bound(&mut self) -> Step {
        if self.target_wildcard && self.per_key {
            self.per_key = false;
            return Step::UnbindKeys;
        }
        Step::Nothing
    }

    /// Every key is bound (checked by the binder when idle): a switch to
    /// per-key ends by unbinding the catch-all.
    pub fn keys_bound(&mut self) -> Step {
        if !self.target_wildcard && self.wildcard && self.per_key {
            self.wildcard = false;
            return Step::UnbindCatchAll;
        }
        Step::Nothing
    }

    /// Waiting for the keys before the catch-all can go.
    pub fn switching_to_keys(&self) -> bool {
        !self.target_wildcard && self.wildcard && self.per_key
    }

    /// The broker refused the catch-all (a topic permission that does not
    /// allow `#`): this exchange is bound per key from now on.
    pub fn refused(&mut self) -> Step {
        self.mode = BindingMode::PerKey;
        self.target_wildcard = false;
        self.wildcard = false;
        if self.per_key {
            return Step::Nothing;
        }
        self.per_key = true;
        Step::BindKeys
    }
}

/// The covers of one plane queue, by exchange name.
pub type Covers = HashMap<String, Cover>;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: BindingMode) -> BindingPolicy {
        BindingPolicy {
            default,
            wildcard: vec!["w".into()],
            per_key: vec!["p".into()],
            ..BindingPolicy::default()
        }
    }

    #[test]
    fn modes_by_exchange_and_type() {
        let p = policy(BindingMode::Auto);
        assert_eq!(p.mode("w", ExchangeKind::Topic), BindingMode::Wildcard);
        assert_eq!(p.mode("p", ExchangeKind::Topic), BindingMode::PerKey);
        assert_eq!(p.mode("x", ExchangeKind::Fanout), BindingMode::Auto);
        // A direct exchange has no catch-all binding.
        assert_eq!(p.mode("w", ExchangeKind::Direct), BindingMode::PerKey);
        assert!(Cover::new(BindingMode::Wildcard, ExchangeKind::Direct, Instant::now()).is_none());
        assert!(Cover::new(BindingMode::PerKey, ExchangeKind::Topic, Instant::now()).is_none());
    }

    #[test]
    fn wildcard_wants_the_catch_all_alone() {
        let c = Cover::new(BindingMode::Wildcard, ExchangeKind::Topic, Instant::now()).unwrap();
        assert!(c.wants("#", false));
        assert!(!c.wants("a.b", true));
        let f = Cover::new(BindingMode::Wildcard, ExchangeKind::Fanout, Instant::now()).unwrap();
        assert!(f.wants("", false));
    }

    #[test]
    fn auto_goes_per_key_above_the_rate_keeping_the_catch_all_until_keys_are_bound() {
        let t0 = Instant::now();
        let window = Duration::from_secs(1);
        let mut c = Cover::new(BindingMode::Auto, ExchangeKind::Topic, t0).unwrap();
        // 5 messages in a 1 s window at most 10/s: stays.
        for i in 0..5 {
            assert_eq!(
                c.observe(t0 + Duration::from_millis(i * 100), window, 10.0),
                Step::Nothing
            );
        }
        assert_eq!(c.observe(t0 + window, window, 10.0), Step::Nothing);
        // 11 in the next window: over.
        let mut step = Step::Nothing;
        for i in 0..11 {
            step = c.observe(t0 + window + Duration::from_millis(i), window, 10.0);
            if step != Step::Nothing {
                break;
            }
        }
        assert_eq!(step, Step::BindKeys);
        // Both wanted until the keys are bound: no loss, one queue so no duplicate.
        assert!(c.wants("#", false) && c.wants("a", true));
        assert!(c.switching_to_keys());
        assert_eq!(c.keys_bound(), Step::UnbindCatchAll);
        assert!(!c.wants("#", false) && c.wants("a", true));
        assert!(!c.measuring());
        // A re-declared queue starts on the catch-all again.
        c.restart(t0 + window * 3);
        assert!(c.wants("#", false) && !c.wants("a", true) && c.measuring());
    }

    #[test]
    fn a_refused_catch_all_falls_back_to_keys_for_good() {
        let t0 = Instant::now();
        let mut c = Cover::new(BindingMode::Wildcard, ExchangeKind::Topic, t0).unwrap();
        assert_eq!(c.refused(), Step::BindKeys);
        assert!(!c.wants("#", false) && c.wants("a", true));
        c.restart(t0);
        assert!(!c.wants("#", false) && c.wants("a", true));
        assert_eq!(c.catch_all_bound(), Step::Nothing);
    }

    #[test]
    fn a_switch_to_the_catch_all_unbinds_keys_once_it_is_bound() {
        let t0 = Instant::now();
        let mut c = Cover::new(BindingMode::Wildcard, ExchangeKind::Topic, t0).unwrap();
        c.per_key = true; // keys bound from before
        assert!(c.wants("#", false) && c.wants("a", true));
        assert_eq!(c.catch_all_bound(), Step::UnbindKeys);
        assert!(!c.wants("a", true));
    }
}
