//! Checking a part's bytes against its stored block checksums ([`BlockCheck`], an `.mmt` input's)
//! as they stream: each block as soon as its last byte has arrived, so corruption in an input is
//! an error before anything of it is written out under fresh checksums.

use mmtensor_format::BlockHasher;

use crate::source::part::{BlockCheck, Part};
use crate::{Error, Result};

/// Checks a tensor's bytes against its [`BlockCheck`] as they stream, each block as soon as its
/// last byte has arrived.
pub(super) struct Checker<'a> {
    check: &'a BlockCheck,
    hasher: BlockHasher,
    checked: usize,
}

impl Checker<'_> {
    pub(super) fn new(check: &BlockCheck) -> Checker<'_> {
        Checker {
            check,
            hasher: BlockHasher::new(check.block_size),
            checked: 0,
        }
    }

    pub(super) fn update(&mut self, part: &Part, tensor: &str, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.checked = compare(
            part,
            tensor,
            self.check,
            self.hasher.checksums(),
            self.checked,
        )?;
        Ok(())
    }

    pub(super) fn finish(self, part: &Part, tensor: &str) -> Result<()> {
        let all = self.hasher.finish();
        let checked = compare(part, tensor, self.check, &all, self.checked)?;
        if checked != self.check.sums.len() {
            // The stream's length was checked against the part's, which the header gives: this
            // holds unless the table and the header disagree, which the table checksum rules out.
            return Err(part.checksum_error(tensor, self.check, checked));
        }
        Ok(())
    }
}

/// Compares the block checksums `done[from..]` with the stored ones; returns how many blocks are
/// now checked.
fn compare(
    part: &Part,
    tensor: &str,
    check: &BlockCheck,
    done: &[u64],
    from: usize,
) -> Result<usize> {
    for (b, sum) in done.iter().enumerate().skip(from) {
        if check.sums.get(b) != Some(sum) {
            return Err(part.checksum_error(tensor, check, b));
        }
    }
    Ok(done.len().max(from))
}

impl Part {
    /// A block of an `.mmt` input whose bytes do not hash to its stored checksum.
    fn checksum_error(&self, tensor: &str, check: &BlockCheck, block: usize) -> Error {
        let start = (block as u64).saturating_mul(check.block_size);
        let end = start.saturating_add(check.block_size).min(self.len);
        Error::InputChecksum {
            path: self.location.path().to_path_buf(),
            tensor: Some(tensor.to_owned()),
            block: block as u64,
            offset: check.offset.saturating_add(start),
            end: check.offset.saturating_add(end),
        }
    }
}
