//! The operator's own audit trail: hash-chained JSON lines on stdout (one
//! chain per process, component `operator`), next to the sidecars' records in
//! the cluster's log pipeline. Tracing logs go to stderr so the two never
//! interleave on one stream.
//!
//! The operator records what only it sees with the API server's
//! authentication: each review with the reviewer's authenticated username,
//! the final decision, expiry, and the final state of a request before
//! retention deletes it.

use std::io::Write;
use std::sync::Mutex;

use cardgate_crds::audit::{AuditRecord, Chain, EventKind, Origin, Outcome};

/// A chain of records and where its lines go. Records are sealed and
/// written under one lock, so the file order is the chain order.
pub struct AuditLog {
    inner: Mutex<Inner>,
    origin: Origin,
}

struct Inner {
    chain: Chain,
    out: Box<dyn Write + Send>,
}

impl AuditLog {
    /// A log writing to `out`, with `origin` on every record.
    pub fn new(out: Box<dyn Write + Send>, origin: Origin) -> Self {
        Self {
            inner: Mutex::new(Inner {
                chain: Chain::default(),
                out,
            }),
            origin,
        }
    }

    /// The operator's log on stdout, naming this replica as the origin.
    pub fn stdout(namespace: &str, pod: &str) -> Self {
        Self::new(
            Box::new(std::io::stdout()),
            Origin {
                component: "operator".into(),
                namespace: Some(namespace.into()),
                pod: Some(pod.into()),
                ..Origin::default()
            },
        )
    }

    /// A record of `event` from this operator at the current time; fill in
    /// the rest and pass it to [`AuditLog::write`].
    pub fn record(&self, event: EventKind, outcome: Outcome) -> AuditRecord {
        AuditRecord::new(event, outcome, self.origin.clone())
    }

    /// Seals `record` into the chain and writes its line. A record that
    /// cannot be written is an error the caller must not ignore: the action
    /// it describes waits and is retried.
    pub fn write(&self, mut record: AuditRecord) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { chain, out } = &mut *inner;
        // Seal a copy first: a failed write must not advance the chain, or
        // the next record would link to one that never reached the log.
        let mut next = chain.clone();
        let line = next.seal(&mut record);
        out.write_all(&line)?;
        out.flush()?;
        *chain = next;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use cardgate_crds::audit::{VerifyOptions, verify};

    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The records written so far.
        pub(crate) fn records(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect()
        }
    }

    /// A writer that fails until told otherwise.
    struct Broken(Arc<Mutex<bool>>, Captured);

    impl Write for Broken {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if *self.0.lock().unwrap() {
                return Err(std::io::Error::other("disk full"));
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_form_a_chain_that_verifies() {
        let out = Captured::default();
        let log = AuditLog::stdout("cardgate-system", "op-0");
        let log = AuditLog::new(Box::new(out.clone()), log.origin.clone());
        for event in [EventKind::ApprovalReview, EventKind::ApprovalDecided] {
            log.write(log.record(event, Outcome::Success)).unwrap();
        }
        let bytes = out.0.lock().unwrap().clone();
        let report = verify(&bytes[..], &VerifyOptions::default()).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 2);
        let records = out.records();
        assert_eq!(records[0]["origin"]["component"], "operator");
        assert_eq!(records[0]["origin"]["pod"], "op-0");
        assert_eq!(records[1]["event"], "approval.decided");
    }

    #[test]
    fn a_failed_write_does_not_break_the_chain() {
        let out = Captured::default();
        let broken = Arc::new(Mutex::new(true));
        let log = AuditLog::new(
            Box::new(Broken(broken.clone(), out.clone())),
            Origin::default(),
        );
        let err = log
            .write(log.record(EventKind::ApprovalReview, Outcome::Success))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        *broken.lock().unwrap() = false;
        log.write(log.record(EventKind::ApprovalReview, Outcome::Success))
            .unwrap();
        let bytes = out.0.lock().unwrap().clone();
        let report = verify(&bytes[..], &VerifyOptions::default()).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(out.records()[0]["seq"], 1);
    }
}
