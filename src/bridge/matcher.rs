//! Routing inside the gateway: which local bindings does a delivery match?
//!
//! Each replica consumes broadcast messages through a few queues of its own
//! (see [`super::plane`]). A queue bound with several keys receives a message
//! once, however many of its bindings match, so the gateway has to find the
//! matching bindings again, with RabbitMQ's rules:
//!
//! - **topic** exchanges: keys are dot-separated words; in a binding key `*`
//!   matches exactly one word and `#` zero or more. Empty words count
//!   (`a..b` has three words) and the empty key has none, as in RabbitMQ's
//!   `rabbit_exchange_type_topic`. A trie of binding keys is walked with the
//!   routing key's words; visited (node, position) pairs are remembered so
//!   that patterns such as `#.#.#.#` cost O(nodes x words), never an
//!   exponential number of paths;
//! - **direct** exchanges: the routing key equals the binding key;
//! - **fanout** exchanges: every binding matches.
//!
//! This module is pure (no I/O) and tested against a reference matcher
//! written from RabbitMQ's rules.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The exchange types the gateway can match itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Topic,
    Direct,
    Fanout,
}

impl ExchangeKind {
    /// The kind for an AMQP exchange type name, `None` for types the gateway
    /// cannot match (headers, plugins' types): those get a queue per binding.
    pub fn from_type_name(name: &str) -> Option<ExchangeKind> {
        match name {
            "topic" => Some(ExchangeKind::Topic),
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            _ => None,
        }
    }
}

/// Splits a topic key into words as RabbitMQ does: `""` has no words.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// The reference matcher: RabbitMQ's topic rule, written as directly as
/// possible (exponential on hostile patterns; tests only).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
        }
    }
    go(&words(pattern), &words(key))
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, usize>,
    star: Option<usize>,
    hash: Option<usize>,
    /// The binding key that ends here.
    key: Option<Arc<str>>,
    /// Binding keys ending at or below this node (0: the node is free).
    count: usize,
}

/// A trie of topic binding keys.
#[derive(Debug)]
pub struct TopicTrie {
    nodes: Vec<Node>,
    free: Vec<usize>,
}

impl Default for TopicTrie {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }
}

impl TopicTrie {
    /// Number of binding keys held.
    pub fn len(&self) -> usize {
        self.nodes[0].count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Node::default();
                i
            }
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        }
    }

    /// The path of nodes for `key`, creating missing ones when `create`.
    fn path(&mut self, key: &str, create: bool) -> Option<Vec<usize>> {
        let mut path = vec![0];
        let mut at = 0;
        for word in words(key) {
            let next = match word {
                "*" => self.nodes[at].star,
                "#" => self.nodes[at].hash,
                w => self.nodes[at].children.get(w).copied(),
            };
            let next = match (next, create) {
                (Some(n), _) => n,
                (None, false) => return None,
                (None, true) => {
                    let n = self.alloc();
                    match word {
                        "*" => self.nodes[at].star = Some(n),
                        "#" => self.nodes[at].hash = Some(n),
                        w => {
                            self.nodes[at].children.insert(w.into(), n);
                        }
                    }
                    n
                }
            };
            path.push(next);
            at = next;
        }
        Some(path)
    }

    /// Adds a binding key; `false` when it was there already.
    pub fn insert(&mut self, key: &str) -> bool {
        let Some(path) = self.path(key, true) else {
            return false;
        };
        let Some(&end) = path.last() else {
            return false;
        };
        if self.nodes[end].key.is_some() {
            return false;
        }
        self.nodes[end].key = Some(Arc::from(key));
        for n in path {
            self.nodes[n].count += 1;
        }
        true
    }

    /// Removes a binding key; `false` when it was not there.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(path) = self.path(key, false) else {
            return false;
        };
        let Some(&end) = path.last() else {
            return false;
        };
        if self.nodes[end].key.take().is_none() {
            return false;
        }
        for n in &path {
            self.nodes[*n].count -= 1;
        }
        // Unlink the nodes that no key passes through any more.
        let ws = words(key);
        for (depth, word) in ws.iter().enumerate() {
            let (parent, child) = (path[depth], path[depth + 1]);
            if self.nodes[child].count == 0 {
                match *word {
                    "*" => self.nodes[parent].star = None,
                    "#" => self.nodes[parent].hash = None,
                    w => {
                        self.nodes[parent].children.remove(w);
                    }
                }
                // Free the whole unlinked branch (all of it has count 0).
                for &n in &path[depth + 1..] {
                    self.nodes[n] = Node::default();
                    self.free.push(n);
                }
                break;
            }
        }
        true
    }

    /// Every binding key that matches `routing_key`, each once.
    pub fn matches(&self, routing_key: &str, out: &mut Vec<Arc<str>>) {
        let ws = words(routing_key);
        let mut seen: HashSet<(usize, usize)> = HashSet::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((node, pos)) = stack.pop() {
            if !seen.insert((node, pos)) {
                continue;
            }
            let n = &self.nodes[node];
            if pos == ws.len() {
                if let Some(key) = &n.key {
                    out.push(Arc::clone(key));
                }
            }
            if let Some(h) = n.hash {
                // `#` takes zero or more of the remaining words.
                for next in pos..=ws.len() {
                    stack.push((h, next));
                }
            }
            if pos < ws.len() {
                if let Some(&c) = n.children.get(ws[pos]) {
                    stack.push((c, pos + 1));
                }
                if let Some(s) = n.star {
                    stack.push((s, pos + 1));
                }
            }
        }
    }
}

/// The bindings of one exchange and what is bound with each key.
#[derive(Debug)]
pub struct ExchangeRoutes<T> {
    pub kind: ExchangeKind,
    entries: HashMap<Arc<str>, T>,
    trie: TopicTrie,
}

impl<T> ExchangeRoutes<T> {
    pub fn new(kind: ExchangeKind) -> ExchangeRoutes<T> {
        ExchangeRoutes {
            kind,
            entries: HashMap::new(),
            trie: TopicTrie::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The binding keys.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.keys()
    }

    /// Calls `each` for every entry, whatever the key (a queue that holds
    /// one binding only).
    pub fn route_all<'a>(&'a self, mut each: impl FnMut(&'a T)) -> usize {
        for e in self.entries.values() {
            each(e);
        }
        self.entries.len()
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        self.entries.get_mut(key)
    }

    /// The entry of `key`, made with `make` (and indexed) when new.
    pub fn entry(&mut self, key: &str, make: impl FnOnce() -> T) -> &mut T {
        if !self.entries.contains_key(key) {
            if self.kind == ExchangeKind::Topic {
                self.trie.insert(key);
            }
            self.entries.insert(Arc::from(key), make());
        }
        // Present: inserted just above if it was not.
        self.entries
            .get_mut(key)
            .expect("entry inserted above when missing")
    }

    pub fn remove(&mut self, key: &str) -> Option<T> {
        let removed = self.entries.remove(key);
        if removed.is_some() && self.kind == ExchangeKind::Topic {
            self.trie.remove(key);
        }
        removed
    }

    /// Calls `each` once for every entry whose binding matches `routing_key`.
    pub fn route<'a>(&'a self, routing_key: &str, mut each: impl FnMut(&'a T)) -> usize {
        match self.kind {
            ExchangeKind::Direct => match self.entries.get(routing_key) {
                Some(e) => {
                    each(e);
                    1
                }
                None => 0,
            },
            ExchangeKind::Fanout => {
                for e in self.entries.values() {
                    each(e);
                }
                self.entries.len()
            }
            ExchangeKind::Topic => {
                let mut keys = Vec::new();
                self.trie.matches(routing_key, &mut keys);
                let mut n = 0;
                for key in keys {
                    if let Some(e) = self.entries.get(&key) {
                        each(e);
                        n += 1;
                    }
                }
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn trie_of(keys: &[&str]) -> TopicTrie {
        let mut t = TopicTrie::default();
        for k in keys {
            t.insert(k);
        }
        t
    }

    fn matched(t: &TopicTrie, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.matches(key, &mut out);
        let mut v: Vec<String> = out.iter().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn reference_follows_rabbitmq_rules() {
        let cases = [
            ("#", "", true),
            ("#", "a.b.c", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("", "", true),
            ("", "a", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.a.#", "a", true),
            ("#.a.#", "x.a.y", true),
            ("#.a.#", "x.b.y", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a..c", true),
            ("a..c", "a..c", true),
            ("*", ".", false),
            ("*.*", ".", true),
            ("#.#", "", true),
            ("a.#.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.b", "a.b.", false),
            ("a.b.#", "a.b.", true),
            ("merchant.42.orders", "merchant.42.orders", true),
            ("merchant.42.orders", "merchant.7.orders", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(topic_matches(p, k), want, "{p:?} vs {k:?}");
            assert_eq!(
                !matched(&trie_of(&[p]), k).is_empty(),
                want,
                "trie {p:?} vs {k:?}"
            );
        }
    }

    #[test]
    fn each_key_matched_once_even_through_several_paths() {
        let t = trie_of(&["#.#", "#.a.#", "a.#", "#"]);
        assert_eq!(matched(&t, "a.a.a"), vec!["#", "#.#", "#.a.#", "a.#"]);
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        let pattern = vec!["#"; 100].join(".");
        let key = vec!["x"; 120].join(".");
        let t = trie_of(&[&pattern, &format!("{pattern}.y")]);
        assert_eq!(matched(&t, &key), vec![pattern.clone()]);
    }

    #[test]
    fn remove_prunes_and_keeps_the_others() {
        let mut t = trie_of(&["a.b", "a.*", "a.#", "#"]);
        assert!(t.remove("a.*"));
        assert!(!t.remove("a.*"));
        assert!(!t.remove("nope.x"));
        assert_eq!(matched(&t, "a.b"), vec!["#", "a.#", "a.b"]);
        for k in ["a.b", "a.#", "#"] {
            assert!(t.remove(k));
        }
        assert!(t.is_empty());
        assert_eq!(t.nodes[0].children.len(), 0);
        assert!(t.nodes[0].hash.is_none() && t.nodes[0].star.is_none());
        // Freed nodes are reused.
        let before = t.nodes.len();
        t.insert("p.q.r");
        assert_eq!(t.nodes.len(), before);
    }

    /// Property test: random patterns and keys over a small alphabet (so
    /// that they collide), the trie against the reference, with inserts and
    /// removals interleaved.
    #[test]
    fn trie_agrees_with_reference_on_random_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5709_6a7e);
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", "", "c"];
        let gen = |rng: &mut rand::rngs::StdRng, alphabet: &[&str]| -> String {
            let n = rng.random_range(0..6);
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect::<Vec<_>>()
                .join(".")
        };
        for _round in 0..300 {
            let mut t = TopicTrie::default();
            let mut live: Vec<String> = Vec::new();
            for _ in 0..rng.random_range(1..20) {
                let p = gen(&mut rng, &pattern_words);
                if t.insert(&p) {
                    live.push(p);
                }
            }
            for _ in 0..rng.random_range(0..5) {
                if live.is_empty() {
                    break;
                }
                let i = rng.random_range(0..live.len());
                let p = live.swap_remove(i);
                assert!(t.remove(&p));
            }
            assert_eq!(t.len(), live.len());
            for _ in 0..30 {
                let k = gen(&mut rng, &key_words);
                let mut want: Vec<String> = live
                    .iter()
                    .filter(|p| topic_matches(p, &k))
                    .cloned()
                    .collect();
                want.sort();
                assert_eq!(matched(&t, &k), want, "key {k:?}, patterns {live:?}");
            }
        }
    }

    #[test]
    fn routes_by_exchange_kind() {
        let mut direct: ExchangeRoutes<u32> = ExchangeRoutes::new(ExchangeKind::Direct);
        *direct.entry("a.*", || 0) += 1;
        *direct.entry("a.b", || 0) += 2;
        let mut got = Vec::new();
        assert_eq!(direct.route("a.b", |v| got.push(*v)), 1);
        assert_eq!(got, vec![2]);
        assert_eq!(direct.route("a.c", |_| {}), 0);

        let mut fanout: ExchangeRoutes<u32> = ExchangeRoutes::new(ExchangeKind::Fanout);
        fanout.entry("x", || 1);
        fanout.entry("y", || 2);
        assert_eq!(fanout.route("anything", |_| {}), 2);

        let mut topic: ExchangeRoutes<u32> = ExchangeRoutes::new(ExchangeKind::Topic);
        topic.entry("a.*", || 1);
        topic.entry("#", || 2);
        assert_eq!(topic.route("a.b", |_| {}), 2);
        assert_eq!(topic.route("b", |_| {}), 1);
        topic.remove("#");
        assert_eq!(topic.route("b", |_| {}), 0);
        assert_eq!(topic.len(), 1);
    }
}
