//! Which request each server message answers: the queue of requests in
//! flight, as a sans-IO state machine.
//!
//! The relay must know, for every message the server sends, which request
//! it belongs to: result rows are masked with their own statement's column
//! plan, counted against its limits, and its outcome is audited when its
//! response ends. PostgreSQL does not say; the pairing follows from its
//! protocol rules, which this module encodes once:
//!
//! - each request's response ends with a known message: ParseComplete,
//!   BindComplete, CloseComplete, NoData or RowDescription (Describe),
//!   CommandComplete, EmptyQueryResponse or PortalSuspended (Execute),
//!   ReadyForQuery (Query, Sync);
//! - an ErrorResponse ends an extended-protocol request, and the server then
//!   discards every message up to the next Sync — a Query included — so those
//!   requests get no response at all and end, skipped, at Sync's
//!   ReadyForQuery;
//! - an ErrorResponse during a Query or at a Sync belongs to it, and its
//!   ReadyForQuery still follows;
//! - NoticeResponse, ParameterStatus and NotificationResponse may come at any
//!   time and answer nothing.
//!
//! Requests the sidecar answers itself are still sent (a denied statement is
//! replaced by one that fails on the server), so the server's own rules keep
//! the queue in step; what to forward is the relay's concern, carried in the
//! queue's items. A message that fits none of these rules is a
//! [`Mismatch`]: the relay ends the session rather than mask rows with
//! another statement's plan.

use std::collections::VecDeque;

/// The kinds of request whose responses are paired. Flush, CopyData,
/// CopyDone and CopyFail get no response of their own: they are not queued
/// (a CopyFail's error ends the Query or Execute that started the copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Simple Query ('Q'), or a FunctionCall the relay turned into one.
    Query,
    /// Parse ('P').
    Parse,
    /// Bind ('B').
    Bind,
    /// Describe ('D') of a prepared statement.
    DescribeStatement,
    /// Describe ('D') of a portal.
    DescribePortal,
    /// Execute ('E').
    Execute,
    /// Close ('C') of a statement or portal.
    Close,
    /// Sync ('S').
    Sync,
}

impl Kind {
    /// Requests whose error makes the server skip to Sync.
    fn extended(self) -> bool {
        !matches!(self, Self::Query | Self::Sync)
    }
}

/// An item of the queue: the relay's own bookkeeping of a request.
pub trait Request {
    /// What kind of request the item stands for.
    fn kind(&self) -> Kind;
}

/// Where one server message belongs.
#[derive(Debug)]
pub enum Step<T> {
    /// It answers no request (notice, parameter status, notification, or an
    /// error while nothing is in flight).
    Unpaired,
    /// It is part of the response of the request at the front, which goes
    /// on (see [`Pairing::front_mut`]).
    Continues,
    /// It is the last message of this request's response.
    Ends(T),
    /// An ErrorResponse ended this extended-protocol request; the requests
    /// up to the next Sync will get no response.
    Fails(T),
    /// ReadyForQuery: it ends `ended` (a Query or a Sync); `skipped` were
    /// discarded by the server after an error, in order.
    Ready {
        /// The requests the server discarded.
        skipped: Vec<T>,
        /// The Query or Sync this ReadyForQuery answers.
        ended: T,
    },
}

/// A server message no request in flight can explain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the database sent {} while {}", crate::postgres::codec::tag_name(*.tag), describe_front(*.front))]
pub struct Mismatch {
    /// The message type.
    pub tag: u8,
    /// The request at the front, if any had been sent.
    pub front: Option<Kind>,
}

fn describe_front(front: Option<Kind>) -> String {
    match front {
        Some(k) => format!("a {k:?} was waiting for its response"),
        None => "no request was in flight".to_string(),
    }
}

/// The requests in flight, oldest first.
#[derive(Debug)]
pub struct Pairing<T> {
    queue: VecDeque<T>,
    /// Items at the back that are queued but not on the wire yet.
    unsent: usize,
    /// An extended request failed: the server discards requests up to Sync.
    skipping: bool,
}

impl<T> Default for Pairing<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            unsent: 0,
            skipping: false,
        }
    }
}

impl<T: Request> Pairing<T> {
    /// Queues a request that will be written after those queued before.
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
        self.unsent += 1;
    }

    /// Every queued request is on the wire now.
    pub fn sent(&mut self) {
        self.unsent = 0;
    }

    /// Queues a request that is written right now, ahead of the queued ones
    /// not yet sent (the relay's own probe).
    pub fn push_sent(&mut self, item: T) {
        let at = self.queue.len() - self.unsent;
        self.queue.insert(at, item);
    }

    /// The request whose response is arriving, if one was sent.
    pub fn front_mut(&mut self) -> Option<&mut T> {
        if self.in_flight() == 0 {
            return None;
        }
        self.queue.front_mut()
    }

    /// Removes every request, oldest first (the session ended).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.unsent = 0;
        self.skipping = false;
        self.queue.drain(..)
    }

    fn in_flight(&self) -> usize {
        self.queue.len() - self.unsent
    }

    fn front_kind(&self) -> Option<Kind> {
        (self.in_flight() > 0)
            .then(|| self.queue.front().map(Request::kind))
            .flatten()
    }

    /// Pairs one server message, by its type byte, with the request it
    /// answers.
    pub fn on_response(&mut self, tag: u8) -> Result<Step<T>, Mismatch> {
        let front = self.front_kind();
        let mismatch = Err(Mismatch { tag, front });
        if matches!(tag, b'N' | b'S' | b'A') {
            return Ok(Step::Unpaired);
        }
        if tag == b'Z' {
            return self.ready().ok_or(Mismatch { tag, front });
        }
        let Some(kind) = front else {
            // A FATAL error can come with nothing in flight.
            return if tag == b'E' {
                Ok(Step::Unpaired)
            } else {
                mismatch
            };
        };
        if self.skipping {
            // The server answers nothing but Sync until then; a FATAL error
            // may still come.
            return if tag == b'E' {
                Ok(Step::Unpaired)
            } else {
                mismatch
            };
        }
        match (kind, tag) {
            (k, b'E') if k.extended() => {
                self.skipping = true;
                Ok(Step::Fails(self.pop()))
            }
            (Kind::Query | Kind::Sync, b'E') => Ok(Step::Continues),
            (Kind::Query, b'T' | b'D' | b'C' | b'I' | b'G' | b'H' | b'W' | b'd' | b'c')
            | (Kind::Execute, b'D' | b'G' | b'H' | b'W' | b'd' | b'c')
            | (Kind::DescribeStatement, b't') => Ok(Step::Continues),
            (Kind::Parse, b'1')
            | (Kind::Bind, b'2')
            | (Kind::Close, b'3')
            | (Kind::DescribeStatement | Kind::DescribePortal, b'T' | b'n')
            | (Kind::Execute, b'C' | b'I' | b's') => Ok(Step::Ends(self.pop())),
            _ => mismatch,
        }
    }

    fn pop(&mut self) -> T {
        self.queue.pop_front().expect("front checked")
    }

    /// ReadyForQuery ends the Query or Sync at the front, after the
    /// requests the server skipped.
    fn ready(&mut self) -> Option<Step<T>> {
        let mut skipped = Vec::new();
        if self.skipping {
            let sync = self.queue.iter().position(|t| t.kind() == Kind::Sync)?;
            if sync >= self.in_flight() {
                return None;
            }
            skipped.extend(self.queue.drain(..sync));
            self.skipping = false;
        }
        match self.front_kind()? {
            Kind::Query | Kind::Sync => Some(Step::Ready {
                skipped,
                ended: self.pop(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request with an id, so tests can tell which one a message went to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Req(Kind, usize);

    impl Request for Req {
        fn kind(&self) -> Kind {
            self.0
        }
    }

    fn pairing(kinds: &[Kind]) -> Pairing<Req> {
        let mut p = Pairing::default();
        for (i, k) in kinds.iter().enumerate() {
            p.push(Req(*k, i));
        }
        p.sent();
        p
    }

    fn ends(step: Result<Step<Req>, Mismatch>) -> usize {
        match step {
            Ok(Step::Ends(r)) => r.1,
            other => panic!("expected an end, got {other:?}"),
        }
    }

    #[test]
    fn extended_batch_pairs_in_order() {
        use Kind::*;
        let mut p = pairing(&[Parse, DescribeStatement, Bind, Execute, Sync]);
        assert_eq!(ends(p.on_response(b'1')), 0);
        assert!(matches!(p.on_response(b't'), Ok(Step::Continues)));
        assert_eq!(ends(p.on_response(b'T')), 1);
        assert_eq!(ends(p.on_response(b'2')), 2);
        assert!(matches!(p.on_response(b'D'), Ok(Step::Continues)));
        assert!(matches!(p.on_response(b'N'), Ok(Step::Unpaired)));
        assert_eq!(ends(p.on_response(b'C')), 3);
        match p.on_response(b'Z') {
            Ok(Step::Ready { skipped, ended }) => {
                assert!(skipped.is_empty());
                assert_eq!(ended, Req(Sync, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_skips_to_sync_including_a_stray_query() {
        use Kind::*;
        let mut p = pairing(&[Parse, Bind, Query, Execute, Sync, Query]);
        assert!(matches!(
            p.on_response(b'E'),
            Ok(Step::Fails(Req(Parse, 0)))
        ));
        // Nothing but ReadyForQuery can answer the skipped requests.
        assert!(p.on_response(b'T').is_err());
        match p.on_response(b'Z') {
            Ok(Step::Ready { skipped, ended }) => {
                assert_eq!(skipped, vec![Req(Bind, 1), Req(Query, 2), Req(Execute, 3)]);
                assert_eq!(ended, Req(Sync, 4));
            }
            other => panic!("{other:?}"),
        }
        // The Query after the Sync runs normally, its error included.
        assert!(matches!(p.on_response(b'E'), Ok(Step::Continues)));
        assert!(matches!(
            p.on_response(b'Z'),
            Ok(Step::Ready {
                ended: Req(Query, 5),
                ..
            })
        ));
    }

    #[test]
    fn responses_to_unsent_requests_are_mismatches() {
        let mut p = Pairing::default();
        p.push(Req(Kind::Query, 0));
        assert_eq!(
            p.on_response(b'T').unwrap_err(),
            Mismatch {
                tag: b'T',
                front: None
            }
        );
        // The probe goes on the wire before the unsent Query.
        p.push_sent(Req(Kind::Query, 1));
        assert!(matches!(
            p.on_response(b'Z'),
            Ok(Step::Ready {
                ended: Req(Kind::Query, 1),
                ..
            })
        ));
        assert!(p.on_response(b'Z').is_err());
        p.sent();
        assert!(matches!(
            p.on_response(b'Z'),
            Ok(Step::Ready {
                ended: Req(Kind::Query, 0),
                ..
            })
        ));
    }

    /// What a request does on a PostgreSQL server in these tests.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Query {
            rows: u8,
            fails: bool,
        },
        Parse {
            fails: bool,
        },
        Bind {
            fails: bool,
        },
        Describe {
            statement: bool,
            rows: bool,
            fails: bool,
        },
        Execute {
            rows: u8,
            fails: bool,
            suspended: bool,
        },
        Close {
            fails: bool,
        },
        Sync {
            fails: bool,
        },
        Flush,
    }

    impl Op {
        fn kind(self) -> Option<Kind> {
            Some(match self {
                Op::Query { .. } => Kind::Query,
                Op::Parse { .. } => Kind::Parse,
                Op::Bind { .. } => Kind::Bind,
                Op::Describe {
                    statement: true, ..
                } => Kind::DescribeStatement,
                Op::Describe { .. } => Kind::DescribePortal,
                Op::Execute { .. } => Kind::Execute,
                Op::Close { .. } => Kind::Close,
                Op::Sync { .. } => Kind::Sync,
                Op::Flush => return None,
            })
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, any::<bool>()).prop_map(|(rows, fails)| Op::Query { rows, fails }),
            any::<bool>().prop_map(|fails| Op::Parse { fails }),
            any::<bool>().prop_map(|fails| Op::Bind { fails }),
            (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(statement, rows, fails)| {
                Op::Describe {
                    statement,
                    rows,
                    fails,
                }
            }),
            (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(rows, fails, suspended)| {
                Op::Execute {
                    rows,
                    fails,
                    suspended,
                }
            }),
            any::<bool>().prop_map(|fails| Op::Close { fails }),
            any::<bool>().prop_map(|fails| Op::Sync { fails }),
            Just(Op::Flush),
        ]
    }

    /// A model of PostgreSQL's backend loop (postgres.c): each request's
    /// messages, tagged with the request they answer (`None`: answers
    /// nothing), and its skip-till-Sync after an extended-protocol error.
    #[derive(Default)]
    struct Server {
        skipping: bool,
    }

    impl Server {
        fn answer(&mut self, op: Op, id: usize, out: &mut Vec<(u8, Option<usize>)>) {
            let me = Some(id);
            if self.skipping {
                if let Op::Sync { .. } = op {
                    self.skipping = false;
                    out.push((b'Z', me));
                }
                return;
            }
            let fail = |out: &mut Vec<(u8, Option<usize>)>, skipping: &mut bool| {
                out.push((b'E', me));
                *skipping = true;
            };
            match op {
                Op::Query { rows, fails } => {
                    out.push((b'T', me));
                    out.extend((0..rows).map(|_| (b'D', me)));
                    out.push((if fails { b'E' } else { b'C' }, me));
                    out.push((b'Z', me));
                }
                Op::Parse { fails: true }
                | Op::Bind { fails: true }
                | Op::Describe { fails: true, .. }
                | Op::Close { fails: true } => fail(out, &mut self.skipping),
                Op::Parse { .. } => out.push((b'1', me)),
                Op::Bind { .. } => out.push((b'2', me)),
                Op::Close { .. } => out.push((b'3', me)),
                Op::Describe {
                    statement, rows, ..
                } => {
                    if statement {
                        out.push((b't', me));
                    }
                    out.push((if rows { b'T' } else { b'n' }, me));
                }
                Op::Execute {
                    rows,
                    fails,
                    suspended,
                } => {
                    out.extend((0..rows).map(|_| (b'D', me)));
                    if fails {
                        fail(out, &mut self.skipping);
                    } else {
                        out.push((if suspended { b's' } else { b'C' }, me));
                    }
                }
                Op::Sync { fails } => {
                    if fails {
                        out.push((b'E', me));
                    }
                    out.push((b'Z', me));
                }
                Op::Flush => {}
            }
            // Asynchronous messages may come between any two.
            if id.is_multiple_of(3) {
                out.push((b'N', None));
            }
        }
    }

    proptest! {
        /// Random batches, sent in random slices while responses arrive:
        /// every message goes to the request the server answered, every
        /// request ends exactly once and in order, and the requests the
        /// server skipped are reported as skipped.
        #[test]
        fn random_interleavings_never_mispair(
            ops in proptest::collection::vec(op(), 0..40),
            slices in proptest::collection::vec(1usize..6, 40),
        ) {
            let mut pairing = Pairing::default();
            let mut server = Server::default();
            let mut wire: VecDeque<(u8, Option<usize>)> = VecDeque::new();
            let mut ended: Vec<usize> = Vec::new();
            let mut skipped_truth: Vec<usize> = Vec::new();
            let mut skipped_seen: Vec<usize> = Vec::new();
            let mut next = 0usize;
            let mut slice = slices.iter().cycle();
            while next < ops.len() || !wire.is_empty() {
                // The client sends a slice of requests; the server reads them.
                let n = *slice.next().unwrap();
                let end = (next + n).min(ops.len());
                for (id, &op) in ops.iter().enumerate().take(end).skip(next) {
                    if let Some(kind) = op.kind() {
                        pairing.push(Req(kind, id));
                        if server.skipping && kind != Kind::Sync {
                            skipped_truth.push(id);
                        }
                    }
                    let mut out = Vec::new();
                    server.answer(op, id, &mut out);
                    wire.extend(out);
                }
                next = (next + n).min(ops.len());
                pairing.sent();
                // Some of the responses arrive.
                for _ in 0..n.min(wire.len()).max(1) {
                    let Some((tag, owner)) = wire.pop_front() else { break };
                    let front = pairing.front_mut().map(|r| r.1);
                    match pairing.on_response(tag).expect("paired") {
                        Step::Unpaired => prop_assert!(owner.is_none()),
                        Step::Continues => prop_assert_eq!(front, owner),
                        Step::Ends(r) | Step::Fails(r) => {
                            prop_assert_eq!(Some(r.1), owner);
                            ended.push(r.1);
                        }
                        Step::Ready { skipped, ended: r } => {
                            prop_assert_eq!(Some(r.1), owner);
                            skipped_seen.extend(skipped.iter().map(|s| s.1));
                            ended.extend(skipped.iter().map(|s| s.1));
                            ended.push(r.1);
                        }
                    }
                }
            }
            // Requests after the last Sync may still wait for one.
            let waiting: Vec<usize> = pairing.drain().map(|r| r.1).collect();
            let mut all = ended.clone();
            all.extend(&waiting);
            let expected: Vec<usize> =
                (0..ops.len()).filter(|&i| ops[i].kind().is_some()).collect();
            prop_assert_eq!(all, expected);
            skipped_truth.retain(|id| !waiting.contains(id));
            prop_assert_eq!(skipped_seen, skipped_truth);
        }
    }
}
