//! The placement simulator: islb's pure placement core against random choice and round
//! robin, on the same sequence of session starts, ends and node failures. No I/O.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use islb_core::sessions::{Ask, Decision, decide};
use islb_core::{NodeKey, Registry, RegistryConfig, Session, Sessions, Timestamp, Verdict};
use islb_gob::Node;

/// Counts live heap bytes, to measure the session table's memory.
pub(crate) struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        islb_core::placement::splitmix64(&mut self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Copy)]
enum Op {
    Start { dc: usize },
    End { pick: u64 },
    Fail { pick: u64 },
}

/// Parameters of a run.
pub(crate) struct SimConfig {
    pub(crate) nodes: usize,
    pub(crate) sessions: usize,
    pub(crate) churn: f64,
    pub(crate) failures: usize,
    pub(crate) seed: u64,
}

const DCS: [&str; 3] = ["dc1", "dc2", "dc3"];

fn ops(cfg: &SimConfig) -> Vec<Op> {
    let mut rng = Rng(cfg.seed);
    let mut out = Vec::new();
    let mut started = 0;
    let fail_every = (cfg.sessions / cfg.failures.max(1)).max(1);
    while started < cfg.sessions {
        if rng.chance(cfg.churn) {
            out.push(Op::End { pick: rng.next() });
        } else {
            out.push(Op::Start { dc: rng.below(DCS.len()) });
            started += 1;
            if cfg.failures > 0 && started % fail_every == 0 {
                out.push(Op::Fail { pick: rng.next() });
            }
        }
    }
    out
}

fn node(i: usize) -> Arc<Node> {
    Arc::new(Node {
        dc: DCS[i % DCS.len()].into(),
        service: "rtc".into(),
        nid: format!("sfu-{i:05}"),
        ..Node::default()
    })
}

/// Results of one strategy.
pub(crate) struct Outcome {
    pub(crate) decisions: usize,
    pub(crate) seconds: f64,
    pub(crate) max_over_mean: f64,
    pub(crate) live_sessions: usize,
}

fn imbalance(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    let mean = total as f64 / counts.len() as f64;
    *counts.iter().max().unwrap_or(&0) as f64 / mean
}

/// islb's core: `decide` for every start and every session of a failed node.
fn run_islb(cfg: &SimConfig, ops: &[Op]) -> (Outcome, f64) {
    let now = Timestamp::from_ms(1_700_000_000_000);
    let mut registry = Registry::new(RegistryConfig { expire_ms: 5_000, placed: ["rtc".to_owned()].into() });
    for i in 0..cfg.nodes {
        registry.apply_write(node(i), now.plus_ms(3_600_000), Verdict::Created);
    }
    let mut next_node = cfg.nodes;
    let before_table = LIVE.load(Ordering::Relaxed);
    let mut sessions = Sessions::new();
    let mut live: Vec<Arc<str>> = Vec::new();
    let mut rng = Rng(cfg.seed ^ 0x5555);
    let mut decisions = 0usize;
    let mut n = 0u64;
    let started = Instant::now();
    for op in ops {
        match *op {
            Op::Start { dc } => {
                n += 1;
                let sid: Arc<str> = format!("s{n}").into();
                let ask = Ask {
                    service: "rtc",
                    sid: &sid,
                    prefer_dc: DCS[dc],
                    default_capacity: 0,
                    now,
                    random: rng.next(),
                    unconfirmed: None,
                };
                if let Decision::Place { node, .. } = decide(&registry, &mut sessions, &ask) {
                    sessions.set(Session { sid: sid.clone(), node: node.id().into(), version: 1, used: now });
                    live.push(sid);
                }
                decisions += 1;
            }
            Op::End { pick } => {
                if !live.is_empty() {
                    let i = (pick % live.len() as u64) as usize;
                    let sid = live.swap_remove(i);
                    sessions.remove(&sid);
                }
            }
            Op::Fail { pick } => {
                let keys = registry.service_nodes("rtc");
                let victim: NodeKey = keys[(pick % keys.len() as u64) as usize].clone();
                registry.remove(&victim);
                let dc = &victim[..victim.find('.').unwrap_or(0)];
                for s in sessions.of_node(&victim) {
                    let ask = Ask {
                        service: "rtc",
                        sid: &s.sid,
                        prefer_dc: dc,
                        default_capacity: 0,
                        now,
                        random: rng.next(),
                        unconfirmed: None,
                    };
                    if let Decision::Place { node, .. } = decide(&registry, &mut sessions, &ask) {
                        sessions.set(Session {
                            sid: s.sid.clone(),
                            node: node.id().into(),
                            version: s.version + 1,
                            used: now,
                        });
                    }
                    decisions += 1;
                }
                registry.apply_write(node(next_node), now.plus_ms(3_600_000), Verdict::Created);
                next_node += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let counts = registry.service_nodes("rtc").iter().map(|k| sessions.count(k) as usize).collect::<Vec<_>>();
    let live_sessions = sessions.len();
    drop(live);
    let with_table = LIVE.load(Ordering::Relaxed);
    let table_bytes = with_table.saturating_sub(before_table);
    drop(sessions);
    let per_session = table_bytes as f64 / live_sessions.max(1) as f64;
    (Outcome { decisions, seconds, max_over_mean: imbalance(&counts), live_sessions }, per_session)
}

/// A baseline: a choice over node indexes (random, or round robin).
fn run_baseline(cfg: &SimConfig, ops: &[Op], mut choose: impl FnMut(&mut Rng, usize) -> usize) -> Outcome {
    // Node slots: a failed node's slot is refilled by a fresh node (as in the islb run).
    let mut counts = vec![0usize; cfg.nodes];
    let mut placed: Vec<usize> = Vec::new(); // live session -> slot
    let mut rng = Rng(cfg.seed ^ 0x5555);
    let mut decisions = 0;
    let started = Instant::now();
    for op in ops {
        match *op {
            Op::Start { .. } => {
                let slot = choose(&mut rng, cfg.nodes);
                counts[slot] += 1;
                placed.push(slot);
                decisions += 1;
            }
            Op::End { pick } => {
                if !placed.is_empty() {
                    let i = (pick % placed.len() as u64) as usize;
                    counts[placed.swap_remove(i)] -= 1;
                }
            }
            Op::Fail { pick } => {
                let victim = (pick % cfg.nodes as u64) as usize;
                for p in placed.iter_mut().filter(|p| **p == victim) {
                    let mut slot = choose(&mut rng, cfg.nodes);
                    if slot == victim {
                        slot = (slot + 1) % cfg.nodes;
                    }
                    *p = slot;
                    counts[slot] += 1;
                    decisions += 1;
                }
                counts[victim] = 0;
            }
        }
    }
    Outcome {
        decisions,
        seconds: started.elapsed().as_secs_f64(),
        max_over_mean: imbalance(&counts),
        live_sessions: placed.len(),
    }
}

/// Runs all three strategies and prints a Markdown table.
pub(crate) fn run(cfg: &SimConfig) {
    let ops = ops(cfg);
    let (islb, per_session) = run_islb(cfg, &ops);
    let random = run_baseline(cfg, &ops, |rng, n| rng.below(n));
    let mut next = 0usize;
    let rr = run_baseline(cfg, &ops, |_, n| {
        next = (next + 1) % n;
        next
    });
    println!(
        "{} nodes in 3 DCs, {} sessions started ({:.0}% churn), {} node failures; {} live sessions at the end",
        cfg.nodes,
        cfg.sessions,
        cfg.churn * 100.0,
        cfg.failures,
        islb.live_sessions
    );
    println!("| strategy | decisions | decisions/s | load imbalance (max/mean sessions per node) |");
    println!("|---|---|---|---|");
    for (name, o) in [("islb (pure core)", &islb), ("random choice", &random), ("round robin", &rr)] {
        println!("| {name} | {} | {:.0} | {:.3} |", o.decisions, o.decisions as f64 / o.seconds, o.max_over_mean);
    }
    println!("islb session table: {per_session:.0} bytes per live session");
}
