//! How a failed command ends: one `error:` line (causes joined, duplicates dropped), a `hint:`
//! where the message alone does not say what to do, and the exit code.

use std::process::ExitCode;

/// Exit code after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Prints `err` on stderr and returns the exit code it calls for: 130 after Ctrl-C, else 1.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", message(err));
    if let Some(hint) = hint(err) {
        eprintln!("hint: {hint}");
    }
    if is_cancelled(err) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::FAILURE
    }
}

/// The error and its causes on one line, skipping a cause whose text the line already holds
/// (library errors often print their source themselves).
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<mmtensor_convert::Error>(),
            Some(mmtensor_convert::Error::Cancelled { .. })
        )
    })
}

/// A short suggestion for errors whose message alone may not say what to do.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    for e in err.chain() {
        if let Some(load) = e.downcast_ref::<mmtensor::Error>() {
            if matches!(load, mmtensor::Error::UnknownFormat { .. }) {
                return Some("mmt reads .mmt stores; convert other files with `mmt convert`");
            }
            if let mmtensor::Error::Io { path, source, .. } = load {
                let manifest = path.file_name() == Some(mmtensor_format::MANIFEST_FILE.as_ref());
                if manifest && source.kind() == std::io::ErrorKind::NotFound {
                    return Some("a folder is a dataset when it holds manifest.mmtm; make one with `mmt convert INPUTS -o DIR --shard-size SIZE`");
                }
            }
        }
        if let Some(fmt) = e.downcast_ref::<mmtensor_format::Error>() {
            if matches!(fmt, mmtensor_format::Error::BadMagic { .. }) {
                return Some(
                    "this is not an .mmt store; convert it with `mmt convert FILE -o OUT.mmt`",
                );
            }
        }
    }
    None
}
