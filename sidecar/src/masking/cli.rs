//! `cardgate-sidecar mask`: dry-run masking rules on sample text. Reads
//! stdin, writes one masked line per input line (or, with `--explain`, one
//! JSON object per detection), so users can see what a MaskingRule does
//! before they deploy it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use cardgate_crds::config::SidecarConfig;
use serde::Serialize;

use super::{Detection, Masker, MaskingError, clean};

/// Arguments of the `mask` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct MaskArgs {
    /// A sidecar configuration file; its `masking` section is used. Without
    /// it, the built-in rules apply (SAD redacted, card numbers BIN6 + last 4).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print each detection as a JSON object (line, detector, kind, start,
    /// end, action, rule) instead of the masked text.
    #[arg(long)]
    pub explain: bool,
}

/// Builds the masker `args` asks for: from the configuration file and its
/// HMAC key file, or the built-in one.
pub fn load_masker(args: &MaskArgs) -> Result<Masker, MaskingError> {
    let Some(path) = &args.config else {
        return Ok(Masker::builtin());
    };
    let config =
        SidecarConfig::load(path).map_err(|e| MaskingError::Config(clean(&e.to_string())))?;
    let key = match &config.masking.hmac_key_file {
        Some(file) => Some(read_hmac_key(Path::new(file))?),
        None => None,
    };
    Masker::from_config(&config.masking, key.as_deref())
}

/// Reads `masking.hmacKeyFile`: its bytes are the key, as they are (no
/// trimming), so every component derives the same tokens from the same file.
pub fn read_hmac_key(path: &Path) -> Result<Vec<u8>, MaskingError> {
    std::fs::read(path).map_err(|e| {
        MaskingError::Config(format!(
            "cannot read HMAC key file {}: {e}",
            clean(&path.display().to_string())
        ))
    })
}

#[derive(Serialize)]
struct ExplainLine<'a> {
    line: usize,
    #[serde(flatten)]
    detection: &'a Detection,
}

/// Runs the command over `input`, writing to `output`. Lines are split on
/// `\n` and handled as bytes, so any encoding passes through; a last line
/// without a newline still gets one.
pub fn run(args: &MaskArgs, input: impl BufRead, output: impl Write) -> Result<(), MaskingError> {
    let masker = load_masker(args)?;
    mask_lines(&masker, args.explain, input, output)
}

/// Masks (or explains) `input` line by line with `masker`.
pub fn mask_lines(
    masker: &Masker,
    explain: bool,
    mut input: impl BufRead,
    output: impl Write,
) -> Result<(), MaskingError> {
    let mut output = std::io::BufWriter::new(output);
    let mut line = Vec::new();
    let mut masked = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if explain {
            for detection in masker.explain(&line) {
                let record = ExplainLine {
                    line: number,
                    detection: &detection,
                };
                serde_json::to_writer(&mut output, &record).map_err(std::io::Error::from)?;
                output.write_all(b"\n")?;
            }
        } else {
            masked.clear();
            match masker.mask_to(&line, &mut masked) {
                Some(_) => output.write_all(&masked)?,
                None => output.write_all(&line)?,
            }
            output.write_all(b"\n")?;
        }
    }
    output.flush()?;
    Ok(())
}
