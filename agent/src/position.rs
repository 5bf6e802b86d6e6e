//! Positions in a master's history, as checkpoints and batch bounds.

use std::cmp::Ordering;
use std::fmt;

use repl_proto::pb;
use repl_types::Tid;

/// How far a slave has got: every change up to `synced`, plus, inside the next change, the first
/// `chunks` of its chunk references (a large TID split across batches).
///
/// Positions are totally ordered: by `synced`, then by progress inside the partial TID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// The last TID fully applied.
    pub synced: Tid,
    /// The TID partly received after `synced`, and how many of its chunk references arrived.
    pub partial: Option<(Tid, u64)>,
}

impl Position {
    /// The position after every change up to `tid`.
    pub fn at(tid: Tid) -> Position {
        Position {
            synced: tid,
            partial: None,
        }
    }

    /// The TID this position has partly received, or else `synced`: the newest TID it touches.
    fn front(&self) -> (Tid, u64) {
        self.partial.unwrap_or((self.synced, u64::MAX))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Position) -> Ordering {
        // A partial TID lies after `synced` and before its own completion, which is
        // `synced == tid` with no partial: hence `u64::MAX` for a whole TID.
        self.front().cmp(&other.front())
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Position) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partial {
            None => write!(f, "{}", self.synced),
            Some((tid, chunks)) => write!(f, "{} (+{chunks} chunks of {tid})", self.synced),
        }
    }
}

/// A position on the wire that does not describe one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad position: {0}")]
pub struct BadPosition(&'static str);

impl TryFrom<&pb::Position> for Position {
    type Error = BadPosition;

    fn try_from(p: &pb::Position) -> Result<Position, BadPosition> {
        let partial = match (p.partial_tid, p.partial_chunks) {
            (0, 0) => None,
            (0, _) => return Err(BadPosition("partial chunks without a partial TID")),
            (tid, chunks) if tid > p.synced_tid => Some((Tid(tid), chunks)),
            _ => return Err(BadPosition("the partial TID is not after the synced TID")),
        };
        Ok(Position {
            synced: Tid(p.synced_tid),
            partial,
        })
    }
}

impl TryFrom<Option<&pb::Position>> for Position {
    type Error = BadPosition;

    fn try_from(p: Option<&pb::Position>) -> Result<Position, BadPosition> {
        p.ok_or(BadPosition("missing")).and_then(Position::try_from)
    }
}

impl From<Position> for pb::Position {
    fn from(p: Position) -> pb::Position {
        let (partial_tid, partial_chunks) = p.partial.map_or((0, 0), |(t, c)| (t.get(), c));
        pb::Position {
            synced_tid: p.synced.get(),
            partial_tid,
            partial_chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_tid_then_by_progress_inside_a_partial_tid() {
        let whole_5 = Position::at(Tid(5));
        let into_7 = |n| Position {
            synced: Tid(5),
            partial: Some((Tid(7), n)),
        };
        let whole_7 = Position::at(Tid(7));
        assert!(whole_5 < into_7(0));
        assert!(into_7(0) < into_7(3));
        assert!(into_7(3) < whole_7);
        assert!(whole_7 < Position::at(Tid(8)));
    }

    #[test]
    fn wire_positions_round_trip_and_nonsense_is_refused() {
        let p = Position {
            synced: Tid(5),
            partial: Some((Tid(7), 2)),
        };
        assert_eq!(Position::try_from(&pb::Position::from(p)), Ok(p));
        let bad = pb::Position {
            synced_tid: 9,
            partial_tid: 7,
            partial_chunks: 1,
        };
        assert!(Position::try_from(&bad).is_err());
        let orphan = pb::Position {
            synced_tid: 9,
            partial_tid: 0,
            partial_chunks: 1,
        };
        assert!(Position::try_from(&orphan).is_err());
        assert!(Position::try_from(None).is_err());
    }
}
