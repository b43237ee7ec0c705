//! Where a new session goes: the choice among the live nodes of a placed service.
//!
//! Pure and deterministic given its inputs (the node loads, the session key, and a random
//! number passed in). The rules, in order:
//!
//! 1. **Eligible**: live, not draining, not full. A node is full when its capacity is known
//!    and the sessions on it reach it, or when it reports a load of 1 or more.
//! 2. **Same DC first**: if any eligible node is in the requester's DC (param `dc`, else
//!    islb's), only those are considered; otherwise every eligible node (fail-over across
//!    DCs rather than refusing).
//! 3. **Least loaded**: score = max(reported `load`, used / capacity), where used =
//!    max(sessions islb placed there + placements in flight + recent unnamed placements,
//!    the node's reported `sessions`); nodes without a capacity use a nominal one, so
//!    among ion's nodes (which report nothing) the one with the fewest sessions wins.
//! 4. **Ties** (and the sample for large clusters) are broken by rendezvous hashing of the
//!    session key with the node key: deterministic per session, spread over sessions. With
//!    more than [`EXACT_LIMIT`] eligible nodes, two are sampled at random and the less loaded
//!    wins (power of two choices), so a decision stays O(1).
//!
//! The `ExtraInfo` keys islb reads from a node's registration (ion's nodes send none):
//! `load` (fraction of its capacity in use, 0 to 1), `sessions` (sessions it hosts by its
//! own count), `capacity` (most sessions it accepts). Numbers of any Go numeric type.

use islb_gob::Node;

/// Above this many eligible nodes, the choice samples two (power of two choices) instead of
/// scanning all.
pub const EXACT_LIMIT: usize = 32;

/// The capacity assumed for scoring a node that states none (not a limit).
pub const NOMINAL_CAPACITY: f64 = 1000.0;

/// What a node reports about itself in `ExtraInfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// `load`: fraction of capacity in use (0..1).
    pub load: Option<f64>,
    /// `sessions`: sessions it hosts by its own count.
    pub sessions: Option<u64>,
    /// `capacity`: most sessions it accepts.
    pub capacity: Option<u64>,
}

impl Report {
    /// Reads `load`, `sessions` and `capacity` from a node's `ExtraInfo`.
    pub fn of(node: &Node) -> Report {
        let get = |k: &str| node.extra_info.get(k);
        Report {
            load: get("load").and_then(|v| v.as_f64()).filter(|l| l.is_finite() && *l >= 0.0),
            sessions: get("sessions").and_then(|v| v.as_u64()),
            capacity: get("capacity").and_then(|v| v.as_u64()),
        }
    }
}

/// One node as the choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `DC.NID`.
    pub key: String,
    /// Its DC.
    pub dc: String,
    /// Sessions islb placed there (cluster-wide, as far as this replica knows).
    pub sessions: u64,
    /// Placements under way or recent unnamed ones, not yet in `sessions`.
    pub pending: u64,
    /// Being drained: no new sessions.
    pub draining: bool,
    /// What it reports.
    pub report: Report,
    /// Capacity to use when the node states none (0: unlimited).
    pub default_capacity: u64,
}

impl Candidate {
    fn used(&self) -> u64 {
        (self.sessions + self.pending).max(self.report.sessions.unwrap_or(0))
    }

    fn capacity(&self) -> Option<u64> {
        self.report.capacity.or(Some(self.default_capacity).filter(|c| *c > 0))
    }

    /// Whether the node takes no new session.
    pub fn full(&self) -> bool {
        self.capacity().is_some_and(|c| self.used() >= c) || self.report.load.is_some_and(|l| l >= 1.0)
    }

    /// Whether the node may take a new session.
    pub fn eligible(&self) -> bool {
        !self.draining && !self.full()
    }

    /// Lower is better.
    pub fn score(&self) -> f64 {
        let cap = self.capacity().map_or(NOMINAL_CAPACITY, |c| c as f64);
        let utilisation = self.used() as f64 / cap;
        utilisation.max(self.report.load.unwrap_or(0.0))
    }
}

/// FNV-1a, for rendezvous hashing (stable across processes and versions).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche, so nearby keys spread.
    mix64(h)
}

/// splitmix64's finaliser: every input bit flips about half the output bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The next number of the splitmix64 sequence whose state is `state` (a small, fast,
/// deterministic generator for sampling; not for secrets).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix64(*state)
}

/// The rendezvous weight of `node` for session `key`.
pub fn rendezvous(session: &str, node: &str) -> u64 {
    fnv(&[session.as_bytes(), node.as_bytes()])
}

/// Whether `a` is a better place than `b` for `session` (lower score; on a tie, the
/// higher rendezvous weight).
pub fn better(a: &Candidate, b: &Candidate, session: &str) -> bool {
    Rank::of(a, session) < Rank::of(b, session)
}

/// Scores closer than this count as a tie, broken by rendezvous hashing.
pub const SCORE_STEP: f64 = 1e-9;

/// Where a candidate stands for one session: a key with a total order (lower is better),
/// whatever the node reported. The score is counted in steps of [`SCORE_STEP`] (NaN and
/// infinity last), so nearly equal scores tie and the session's rendezvous weight decides;
/// the node key settles the (astronomically unlikely) equal weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'a> {
    steps: u64,
    weight: std::cmp::Reverse<u64>,
    key: &'a str,
}

impl<'a> Rank<'a> {
    /// The rank of `c` for `session`.
    pub fn of(c: &'a Candidate, session: &str) -> Self {
        Rank { steps: score_steps(c.score()), weight: std::cmp::Reverse(rendezvous(session, &c.key)), key: &c.key }
    }
}

/// A score as a whole number of [`SCORE_STEP`]s: NaN and anything too large saturate to the
/// worst value, negatives to zero (a float-to-integer cast saturates).
fn score_steps(score: f64) -> u64 {
    if score.is_nan() { u64::MAX } else { (score / SCORE_STEP).round() as u64 }
}

/// Chooses the node for a new session `session` (for an unnamed session, any string that
/// differs per call); `random` is a random number (used only beyond [`EXACT_LIMIT`]
/// eligible nodes). Returns the index in `candidates`, or `None` when every node is
/// full or draining.
pub fn choose(candidates: &[Candidate], prefer_dc: &str, session: &str, random: u64) -> Option<usize> {
    let eligible: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].eligible()).collect();
    let local: Vec<usize> = eligible.iter().copied().filter(|&i| candidates[i].dc == prefer_dc).collect();
    let pool = if local.is_empty() { eligible } else { local };
    match pool.len() {
        0 => None,
        n if n <= EXACT_LIMIT => {
            pool.into_iter().reduce(|best, i| if better(&candidates[i], &candidates[best], session) { i } else { best })
        }
        n => {
            let a = pool[((random & 0xffff_ffff) % n as u64) as usize];
            let mut b = pool[((random >> 32) % (n as u64 - 1)) as usize];
            if b == a {
                b = pool[n - 1];
            }
            Some(if better(&candidates[b], &candidates[a], session) { b } else { a })
        }
    }
}

/// Every candidate, best first: eligible ones in the preferred DC, then other eligible
/// ones, then full or draining ones; by score within each group.
pub fn rank(candidates: &[Candidate], prefer_dc: &str, session: &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let group = |c: &Candidate| match (c.eligible(), c.dc == prefer_dc) {
        (true, true) => 0u8,
        (true, false) => 1,
        (false, _) => 2,
    };
    // A key per candidate, computed once: a total order, so no report can upset the sort.
    order.sort_by_cached_key(|&i| (group(&candidates[i]), Rank::of(&candidates[i], session)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use islb_gob::Value;
    use proptest::prelude::*;

    fn cand(key: &str, dc: &str, sessions: u64) -> Candidate {
        Candidate {
            key: key.into(),
            dc: dc.into(),
            sessions,
            pending: 0,
            draining: false,
            report: Report::default(),
            default_capacity: 0,
        }
    }

    #[test]
    fn the_least_loaded_node_wins() {
        let c = [cand("dc1.a", "dc1", 5), cand("dc1.b", "dc1", 2), cand("dc1.c", "dc1", 9)];
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1));
    }

    #[test]
    fn placements_in_flight_count_at_once() {
        let mut c = [cand("dc1.a", "dc1", 2), cand("dc1.b", "dc1", 2)];
        let first = choose(&c, "dc1", "room-1", 0).unwrap();
        c[first].pending += 1;
        let second = choose(&c, "dc1", "room-2", 0).unwrap();
        assert_ne!(first, second, "a burst spreads instead of herding");
    }

    #[test]
    fn the_requesters_dc_comes_first_and_others_are_the_fallback() {
        let mut c = [cand("dc1.a", "dc1", 50), cand("dc2.b", "dc2", 0)];
        assert_eq!(choose(&c, "dc1", "room", 0), Some(0), "same DC even if busier");
        assert_eq!(choose(&c, "dc2", "room", 0), Some(1));
        c[0].draining = true;
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1), "another DC rather than nothing");
    }

    #[test]
    fn draining_and_full_nodes_get_nothing() {
        let mut c = [cand("dc1.a", "dc1", 0), cand("dc1.b", "dc1", 7)];
        c[0].draining = true;
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1));
        c[1].report.capacity = Some(7);
        assert!(c[1].full());
        assert_eq!(choose(&c, "dc1", "room", 0), None, "everyone full or draining: no node");
        c[1].report.capacity = None;
        c[1].default_capacity = 8;
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1), "the configured default capacity applies");
        c[1].report.load = Some(1.0);
        assert_eq!(choose(&c, "dc1", "room", 0), None, "a node reporting load 1 is full");
    }

    #[test]
    fn reported_load_and_sessions_blend_with_islbs_count() {
        let mut c = [cand("dc1.a", "dc1", 1), cand("dc1.b", "dc1", 3)];
        c[0].report.load = Some(0.9); // busy with something islb does not see
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1));
        let mut c = [cand("dc1.a", "dc1", 1), cand("dc1.b", "dc1", 3)];
        c[0].report.sessions = Some(10); // hosts more than islb placed there
        assert_eq!(choose(&c, "dc1", "room", 0), Some(1));
        let mut c = [cand("dc1.a", "dc1", 40), cand("dc1.b", "dc1", 10)];
        c[0].report.capacity = Some(100);
        c[1].report.capacity = Some(20);
        assert_eq!(choose(&c, "dc1", "room", 0), Some(0), "40% beats 50%");
    }

    #[test]
    fn ties_are_broken_by_rendezvous_hashing_deterministically_and_evenly() {
        let c: Vec<_> = (0..8).map(|i| cand(&format!("dc1.sfu-{i}"), "dc1", 0)).collect();
        let a = choose(&c, "dc1", "room-42", 0);
        assert_eq!(a, choose(&c, "dc1", "room-42", 12345), "the same session, the same node");
        let mut hits = [0usize; 8];
        for s in 0..8000 {
            hits[choose(&c, "dc1", &format!("room-{s}"), 0).unwrap()] += 1;
        }
        assert!(hits.iter().all(|h| (800..1200).contains(h)), "{hits:?}");
    }

    #[test]
    fn large_clusters_use_two_random_choices() {
        let mut c: Vec<_> = (0..1000).map(|i| cand(&format!("dc1.n{i}"), "dc1", 10)).collect();
        c[7].sessions = 0;
        c[8].sessions = 20;
        // random picks 7 and 8: the less loaded of the two wins.
        let random = 7u64 | (8u64 << 32);
        assert_eq!(choose(&c, "dc1", "room", random), Some(7));
        let random = 8u64 | (7u64 << 32);
        assert_eq!(choose(&c, "dc1", "room", random), Some(7));
    }

    #[test]
    fn rank_lists_every_node_best_first() {
        let mut c =
            [cand("dc1.a", "dc1", 5), cand("dc2.b", "dc2", 0), cand("dc1.c", "dc1", 1), cand("dc1.d", "dc1", 0)];
        c[3].draining = true;
        assert_eq!(rank(&c, "dc1", "x"), vec![2, 0, 1, 3]);
    }

    #[test]
    fn reports_are_read_from_extra_info_of_any_numeric_type() {
        let mut n = Node::default();
        n.extra_info.insert("load".into(), Value::Float32(0.5));
        n.extra_info.insert("sessions".into(), Value::Int(12));
        n.extra_info.insert("capacity".into(), Value::Uint16(100));
        assert_eq!(Report::of(&n), Report { load: Some(0.5), sessions: Some(12), capacity: Some(100) });
        n.extra_info.insert("load".into(), Value::String("high".into()));
        n.extra_info.insert("capacity".into(), Value::Int(-1));
        assert_eq!(Report::of(&n), Report { load: None, sessions: Some(12), capacity: None });
    }

    /// Issue 11: a few hundred nodes whose loads differ by less than 1e-12 made the old
    /// comparator (an epsilon test) intransitive, and the sort panicked.
    #[test]
    fn nearly_equal_loads_rank_without_panic_and_tie_by_rendezvous() {
        let c: Vec<_> = (0..600)
            .map(|i| {
                let mut c = cand(&format!("dc1.sfu-{i}"), "dc1", 0);
                c.report.load = Some(0.5 + (i % 7) as f64 * 3e-13);
                c
            })
            .collect();
        let mut firsts = std::collections::HashSet::new();
        for s in 0..200 {
            let order = rank(&c, "dc1", &format!("room-{s}"));
            assert_eq!(order.len(), c.len());
            firsts.insert(order[0]);
        }
        assert!(firsts.len() > 50, "ties spread over sessions: {} distinct first nodes", firsts.len());
    }

    fn any_report() -> impl Strategy<Value = Report> {
        let float = prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(0.5),
            Just(0.5 + 1e-13),
            any::<f64>(),
            0.0..2.0f64,
        ];
        (proptest::option::of(float), proptest::option::of(any::<u64>()), proptest::option::of(0u64..5))
            .prop_map(|(load, sessions, capacity)| Report { load, sessions, capacity })
    }

    fn any_candidate() -> impl Strategy<Value = Candidate> {
        (0u32..40, prop_oneof![Just("dc1"), Just("dc2")], 0u64..4, 0u64..3, any::<bool>(), any_report(), 0u64..3)
            .prop_map(|(n, dc, sessions, pending, draining, report, default_capacity)| Candidate {
                key: format!("{dc}.n{n}"),
                dc: dc.into(),
                sessions,
                pending,
                draining,
                report,
                default_capacity,
            })
    }

    proptest! {
        /// Whatever nodes report (NaN, infinities, zero capacity, huge counts), ranking is a
        /// total order: it never panics, lists every candidate once, does not depend on the
        /// order the candidates come in, and agrees with `choose`.
        #[test]
        fn ranking_is_a_total_order_over_any_reports(
            cands in proptest::collection::vec(any_candidate(), 0..60),
            session in "[a-z]{1,8}",
            seed in any::<u64>(),
        ) {
            let order = rank(&cands, "dc1", &session);
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..cands.len()).collect::<Vec<_>>());
            // The same candidates in another order rank to the same sequence of nodes.
            let mut shuffled: Vec<usize> = (0..cands.len()).collect();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, (splitmix64(&mut state) % (i as u64 + 1)) as usize);
            }
            let permuted: Vec<Candidate> = shuffled.iter().map(|&i| cands[i].clone()).collect();
            // Keys may repeat in generated input; compare the ranks, which include the key.
            fn ranks<'a>(c: &'a [Candidate], o: &[usize], session: &str) -> Vec<Rank<'a>> {
                o.iter().map(|&i| Rank::of(&c[i], session)).collect()
            }
            prop_assert_eq!(ranks(&cands, &order, &session), ranks(&permuted, &rank(&permuted, "dc1", &session), &session));
            // Within the exact limit, `choose` picks the first eligible node of the ranking.
            if cands.len() <= EXACT_LIMIT {
                let chosen = choose(&cands, "dc1", &session, seed);
                let best = order.first().copied().filter(|&i| cands[i].eligible());
                prop_assert_eq!(chosen.map(|i| Rank::of(&cands[i], &session)), best.map(|i| Rank::of(&cands[i], &session)));
            }
        }
    }
}
