//! The `evidence` command shared by `kubectl cardgate evidence` and
//! `cardgate-sidecar audit evidence`: reads files, directories (every file
//! below, in name order) and stdin (`-`), writes the JSON and HTML reports
//! and prints a summary.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use super::report::Status;
use super::{Export, Options, Report, Severity};

/// What to read and where the reports go.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Files, directories, or `-` for stdin.
    pub paths: Vec<PathBuf>,
    /// Where to write the JSON report (`-`: stdout, instead of the summary).
    pub json: Option<PathBuf>,
    /// Where to write the HTML report.
    pub html: Option<PathBuf>,
    /// Verification options.
    pub options: Options,
}

/// Reads every input into one export.
pub fn read_inputs(paths: &[PathBuf], stdin: impl BufRead) -> io::Result<Export> {
    let mut export = Export::default();
    let mut stdin = Some(stdin);
    for p in paths {
        if p.as_os_str() == "-" {
            let input = stdin
                .take()
                .ok_or_else(|| io::Error::other("stdin (-) is given twice"))?;
            export.read("-", input)?;
            continue;
        }
        let mut files = Vec::new();
        collect_files(p, &mut files)?;
        for f in files {
            let file = std::fs::File::open(&f)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
            export.read(&f.display().to_string(), io::BufReader::new(file))?;
        }
    }
    Ok(export)
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let meta = std::fs::metadata(p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    if !meta.is_dir() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(p)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    children.sort();
    for c in children {
        collect_files(&c, out)?;
    }
    Ok(())
}

/// Runs the command; returns the report (its `verified` decides the exit
/// status).
pub fn run(args: &Args, stdin: impl BufRead, out: &mut impl Write) -> io::Result<Report> {
    if args.paths.is_empty() {
        return Err(io::Error::other(
            "give at least one file, directory or - (stdin)",
        ));
    }
    let export = read_inputs(&args.paths, stdin)?;
    let report = super::examine(&export, &args.options);
    if let Some(path) = &args.html {
        std::fs::write(path, super::html::render(&report))?;
    }
    match &args.json {
        Some(p) if p.as_os_str() == "-" => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
            return Ok(report);
        }
        Some(p) => {
            let f = std::fs::File::create(p)?;
            serde_json::to_writer_pretty(io::BufWriter::new(f), &report)?;
        }
        None => {}
    }
    print_summary(&report, args, out)?;
    Ok(report)
}

/// The summary a person reads in the terminal.
pub fn print_summary(r: &Report, args: &Args, out: &mut impl Write) -> io::Result<()> {
    let s = &r.summary;
    writeln!(
        out,
        "{}: {} records in {} chains from {} lines ({} bytes); {} to {}",
        if r.verified { "VERIFIED" } else { "FAILED" },
        s.records,
        s.chains,
        s.lines,
        s.bytes,
        s.first_time.as_deref().unwrap_or("-"),
        s.last_time.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "identities {}, denials {}, approvals {}, masked values {}",
        s.identities.len(),
        s.denials,
        s.approvals,
        s.masked_values
    )?;
    for q in &r.requirements {
        let status = match q.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Info => "info",
        };
        writeln!(out, "  {:<13} {status:<4} {}", q.id, q.title)?;
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Failure => "FAILURE",
            Severity::Warning => "warning",
        };
        writeln!(out, "{sev}: {}", f.message)?;
        for rec in &f.records {
            writeln!(out, "    record {rec}")?;
        }
    }
    for (what, p) in [("JSON", &args.json), ("HTML", &args.html)] {
        if let Some(p) = p {
            writeln!(out, "{what} report: {}", p.display())?;
        }
    }
    Ok(())
}
