//! The names new shards take (`shard-NNNNN.mmt`): never one a manifest of the folder has listed.

use std::collections::HashSet;

use mmtensor_format::Manifest;

/// The names new shards take: `shard-NNNNN.mmt`, counting up from above the highest such name a
/// manifest lists (a name, once listed, is never given to other bytes, even after the shard it
/// named was replaced), skipping any listed name.
#[derive(Default)]
pub(super) struct Names {
    next: u64,
    taken: HashSet<String>,
    /// `part-ID-NONCE-` for the shards of a part writer; empty for `shard-`.
    part: Option<String>,
    /// `-NONCE` after the number of a staged writer's `shard-` names.
    nonce: Option<String>,
}

impl Names {
    /// Names for new shards of the dataset `manifest` describes. Every write that takes a shard
    /// out of a manifest writes its replacement under a higher name in the same manifest, so the
    /// highest listed name only grows, and no name above it was ever listed: files under such
    /// names are a killed writer's leftovers, which a new shard may replace.
    pub(super) fn after(manifest: &Manifest) -> Names {
        let above = manifest
            .shards()
            .iter()
            .filter_map(|s| shard_index(s.file()))
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0);
        Names {
            next: above.max(manifest.shards().len() as u64),
            taken: manifest
                .shards()
                .iter()
                .map(|s| s.file().to_ascii_lowercase())
                .collect(),
            part: None,
            nonce: None,
        }
    }

    /// These names with `-NONCE` after the number (`shard-00007-NONCE.mmt`): no other writer
    /// counting from the same manifest takes them.
    pub(super) fn with_nonce(mut self, nonce: &str) -> Names {
        self.nonce = Some(format!("-{nonce}"));
        self
    }

    /// Names for the shards of part `id` written by the writer `nonce`: `part-ID-NONCE-NNNNN.mmt`,
    /// which no other writer takes (another part has another id; another attempt at this part,
    /// another nonce) and no `shard-` name equals.
    pub(super) fn for_part(id: u64, nonce: &str) -> Names {
        Names {
            part: Some(format!("part-{id:05}-{nonce}-")),
            ..Names::default()
        }
    }

    /// The next free name.
    pub(super) fn take(&mut self) -> String {
        loop {
            let name = match &self.part {
                Some(prefix) => format!("{prefix}{:05}.mmt", self.next),
                None => format!(
                    "shard-{:05}{}.mmt",
                    self.next,
                    self.nonce.as_deref().unwrap_or("")
                ),
            };
            self.next += 1;
            if !self.taken.contains(&name) {
                return name;
            }
        }
    }

    /// Gives back the name [`Names::take`] gave last, unused (its file was discarded): the next
    /// `take` gives it again.
    pub(super) fn give_back(&mut self) {
        self.next = self.next.saturating_sub(1);
    }
}

/// `N` for a name `shard-N.mmt` that a dataset writer makes (digits only, `N` below 10^12),
/// else `None`. The cap keeps the count of [`Names`] far from overflowing whatever a hand-made
/// manifest lists; a larger number is an ordinary name, skipped if it comes up.
pub(super) fn shard_index(file: &str) -> Option<u64> {
    let digits = file.strip_prefix("shard-")?.strip_suffix(".mmt")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `(ID, NONCE)` for a name `part-ID-NONCE-N.mmt` that a part writer makes, else `None`.
pub(super) fn part_of(file: &str) -> Option<(u64, &str)> {
    let rest = file.strip_prefix("part-")?.strip_suffix(".mmt")?;
    let mut fields = rest.splitn(3, '-');
    let id = fields.next()?;
    let nonce = fields.next()?;
    let n = fields.next()?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let hex = nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    if !digits(id) || !digits(n) || !hex {
        return None;
    }
    Some((id.parse().ok()?, nonce))
}
