//! Open connections, counted per source ([`crate::source`]) so that one
//! client cannot hold them all: a source holds at most
//! [`ConnectionLimits::per_source`] connections (one more is refused: closed
//! right after `accept`), and when all [`ConnectionLimits::max`] are in use
//! a newcomer is let in by shedding the oldest connection of the source
//! that holds the most, provided that source holds more than the newcomer's
//! own source would after admission. Everyone therefore keeps a fair share:
//! a client holding idle connections loses them to clients that hold fewer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::source::SourceKey;

/// Connection caps.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once, all sources together.
    pub max: usize,
    /// Connections one source holds at most.
    pub per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 1024,
            per_source: 128,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already holds `per_source` connections.
    PerSource(usize),
    /// Every connection is in use and no source holds more than its share.
    Full(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerSource(n) => write!(
                f,
                "this source already holds {n} connections (the per-source cap)"
            ),
            Refusal::Full(n) => write!(
                f,
                "all {n} connections are in use and no source holds more than its share"
            ),
        }
    }
}

#[derive(Default)]
struct Table {
    /// Per source: connection seq → the signal that sheds it.
    by_source: HashMap<SourceKey, BTreeMap<u64, oneshot::Sender<()>>>,
    total: usize,
    next: u64,
    decided: u64,
    shed: u64,
    refused_per_source: u64,
    refused_full: u64,
}

/// The registry of open connections.
pub struct Connections {
    table: Mutex<Table>,
    limits: ConnectionLimits,
}

/// Held by a connection's task while it lives: dropping it frees the slot.
pub struct Admitted {
    registry: Arc<Connections>,
    source: SourceKey,
    seq: u64,
    /// Fires when the connection is shed to make room for another source.
    pub shed: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admitted({} #{})", self.source, self.seq)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.registry.lock();
        let removed = t
            .by_source
            .get_mut(&self.source)
            .and_then(|m| m.remove(&self.seq))
            .is_some();
        if removed {
            t.total -= 1;
        }
        if t.by_source.get(&self.source).is_some_and(|m| m.is_empty()) {
            t.by_source.remove(&self.source);
        }
    }
}

/// Counters of the registry, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Open now.
    pub open: usize,
    /// Sources holding a connection now.
    pub sources: usize,
    /// Connections admitted or refused so far.
    pub decided: u64,
    /// Connections shed to make room for another source.
    pub shed: u64,
    /// Connections refused: source at its cap.
    pub refused_per_source: u64,
    /// Connections refused: all in use, fairly shared.
    pub refused_full: u64,
}

impl Connections {
    /// An empty registry.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Connections {
            table: Mutex::new(Table::default()),
            limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters now.
    pub fn stats(&self) -> ConnectionStats {
        let t = self.lock();
        ConnectionStats {
            open: t.total,
            sources: t.by_source.len(),
            decided: t.decided,
            shed: t.shed,
            refused_per_source: t.refused_per_source,
            refused_full: t.refused_full,
        }
    }

    /// Connections `source` holds now.
    pub fn held_by(&self, source: &SourceKey) -> usize {
        self.lock().by_source.get(source).map_or(0, |m| m.len())
    }

    /// Admit a connection from `source`, shedding another source's oldest
    /// connection if all are in use (see the module documentation).
    pub fn admit(self: &Arc<Self>, source: SourceKey) -> Result<Admitted, Refusal> {
        let mut t = self.lock();
        t.decided += 1;
        let own = t.by_source.get(&source).map_or(0, |m| m.len());
        if own >= self.limits.per_source.max(1) {
            t.refused_per_source += 1;
            return Err(Refusal::PerSource(self.limits.per_source));
        }
        if t.total >= self.limits.max.max(1) {
            let hog = t
                .by_source
                .iter()
                .max_by_key(|(_, m)| m.len())
                .map(|(s, m)| (s.clone(), m.len()));
            match hog {
                Some((hog, held)) if held > own + 1 => {
                    let conns = t.by_source.get_mut(&hog).expect("hog is in the table");
                    if let Some((_, signal)) = conns.pop_first() {
                        let _ = signal.send(());
                    }
                    if conns.is_empty() {
                        t.by_source.remove(&hog);
                    }
                    t.total -= 1;
                    t.shed += 1;
                }
                _ => {
                    t.refused_full += 1;
                    return Err(Refusal::Full(self.limits.max));
                }
            }
        }
        let seq = t.next;
        t.next += 1;
        let (tx, rx) = oneshot::channel();
        t.by_source
            .entry(source.clone())
            .or_default()
            .insert(seq, tx);
        t.total += 1;
        drop(t);
        Ok(Admitted {
            registry: self.clone(),
            source,
            seq,
            shed: rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> SourceKey {
        SourceKey::V4([127, 0, 0, last])
    }

    #[test]
    fn one_source_is_capped_and_others_still_get_in() {
        let c = Connections::new(ConnectionLimits {
            max: 10,
            per_source: 4,
        });
        let held: Vec<_> = (0..4).map(|_| c.admit(src(1)).unwrap()).collect();
        assert_eq!(c.admit(src(1)).unwrap_err(), Refusal::PerSource(4));
        let other = c.admit(src(2)).unwrap();
        assert_eq!(c.stats().open, 5);
        drop(held);
        drop(other);
        assert_eq!(
            c.stats(),
            ConnectionStats {
                open: 0,
                sources: 0,
                decided: 6,
                shed: 0,
                refused_per_source: 1,
                refused_full: 0
            }
        );
    }

    #[test]
    fn a_full_server_sheds_the_biggest_holder_oldest_first() {
        let c = Connections::new(ConnectionLimits {
            max: 6,
            per_source: 4,
        });
        let mut hog: Vec<_> = (0..4).map(|_| c.admit(src(1)).unwrap()).collect();
        let _b: Vec<_> = (0..2).map(|_| c.admit(src(2)).unwrap()).collect();
        // Full: a newcomer gets in at the expense of the hog's oldest.
        let _newcomer = c.admit(src(3)).unwrap();
        assert!(hog[0].shed.try_recv().is_ok(), "the oldest is shed");
        assert!(hog[1].shed.try_recv().is_err());
        assert_eq!(c.held_by(&src(1)), 3);
        assert_eq!(c.stats().open, 6);
        // Dropping a shed connection frees nothing twice.
        drop(hog.remove(0));
        assert_eq!(c.stats().open, 6);
        // Shares are now 3/2/1: src(3) may take one more from the hog, after
        // which every source holds 2 and nobody gains by shedding.
        let _n2 = c.admit(src(3)).unwrap();
        assert!(hog[0].shed.try_recv().is_ok());
        assert_eq!(c.held_by(&src(1)), 2);
        assert_eq!(c.admit(src(2)).unwrap_err(), Refusal::Full(6));
        assert_eq!(c.stats().shed, 2);
    }
}
