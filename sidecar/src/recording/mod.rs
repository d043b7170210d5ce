//! Session recordings: the masked exchange of each session with timings, in
//! its own file under `audit.recordingsDir`, and `replay` to show it again
//! the way psql showed it.
//!
//! The proxy creates one [`Recorder`] per session from [`Recordings`] and
//! feeds it already-masked data; [`replay`] reads a file back.

pub mod format;
pub mod recorder;
pub mod replay;

pub use recorder::{
    DiagnosticRef, Recorder, RecordingError, RecordingLimits, Recordings, SessionInfo,
};
pub use replay::{Pace, ReplayError, ReplaySummary, replay};
