//! Change notification for a request directory: inotify (through `notify`)
//! turns each replaced request file into a broadcast of its name, so a
//! waiting statement re-reads its request only when it changed.

use std::path::Path;
use std::sync::Mutex;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::broadcast;

use crate::approval::StoreError;
use crate::approval::object::is_request_name;

/// Changes buffered per subscriber; a subscriber that falls further behind
/// re-reads (it gets [`broadcast::error::RecvError::Lagged`]).
const CAPACITY: usize = 256;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The file of this request was created, replaced or removed.
    Request(String),
    /// Anything may have changed (events were lost, the directory itself
    /// changed, or the watch failed): everybody re-reads.
    Everything,
}

/// The directory watch; dropping it stops the notification thread.
pub(crate) struct Changes {
    tx: broadcast::Sender<Change>,
    _watcher: Mutex<RecommendedWatcher>,
}

impl Changes {
    /// Starts watching `dir` (not recursively).
    pub(crate) fn watch(dir: &Path) -> Result<Changes, StoreError> {
        let (tx, _) = broadcast::channel(CAPACITY);
        let sender = tx.clone();
        let watched = dir.to_path_buf();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                for change in classify(&watched, event) {
                    // No subscribers is fine: nobody is waiting.
                    let _ = sender.send(change);
                }
            })
            .map_err(|e| {
                StoreError::unavailable(format!(
                    "cannot watch approval directory {}: {e}",
                    dir.display()
                ))
            })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                StoreError::unavailable(format!(
                    "cannot watch approval directory {}: {e}",
                    dir.display()
                ))
            })?;
        Ok(Changes {
            tx,
            _watcher: Mutex::new(watcher),
        })
    }

    /// A receiver of every change from now on; subscribe *before* reading
    /// so that no change between the read and the wait is missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// The changes one notification means. Dot files (the lock, temporary
/// files) are ignored; a rename onto `NAME.json` reports NAME.
fn classify(dir: &Path, event: notify::Result<notify::Event>) -> Vec<Change> {
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(directory = %dir.display(), error = %e, "approval directory watch reported an error; re-reading");
            return vec![Change::Everything];
        }
    };
    if event.need_rescan() {
        return vec![Change::Everything];
    }
    if matches!(event.kind, EventKind::Access(_)) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for path in &event.paths {
        if path == dir {
            out.push(Change::Everything);
            continue;
        }
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('.'))
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if is_request_name(stem) {
            out.push(Change::Request(stem.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use std::path::PathBuf;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(kind);
        e.paths = paths.iter().map(PathBuf::from).collect();
        Ok(e)
    }

    #[test]
    fn renames_onto_request_files_name_the_request() {
        let dir = Path::new("/d");
        let got = classify(
            dir,
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[
                    "/d/.p-0123abcd-wxyz.json.1.2.tmp",
                    "/d/p-0123abcd-wxyz.json",
                ],
            ),
        );
        assert_eq!(got, [Change::Request("p-0123abcd-wxyz".into())]);
    }

    #[test]
    fn lock_temp_and_foreign_files_are_ignored_and_the_directory_itself_wakes_everyone() {
        let dir = Path::new("/d");
        assert!(
            classify(
                dir,
                event(EventKind::Create(CreateKind::File), &["/d/.lock"])
            )
            .is_empty()
        );
        assert!(
            classify(
                dir,
                event(EventKind::Create(CreateKind::File), &["/d/notes.txt"])
            )
            .is_empty()
        );
        assert_eq!(
            classify(
                dir,
                event(
                    EventKind::Remove(notify::event::RemoveKind::Folder),
                    &["/d"]
                )
            ),
            [Change::Everything]
        );
        assert_eq!(
            classify(dir, Err(notify::Error::generic("queue overflow"))),
            [Change::Everything]
        );
    }
}
