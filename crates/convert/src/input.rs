//! What the user names: inputs (`NAME=PATH`, files, folders, globs, shard lists) and dtype rules.

use std::path::{Path, PathBuf};

use mmtensor_format::Dtype;

use crate::{Error, Result};

/// One input argument: a file, a folder or glob of `.npy` shards, or an explicit shard list,
/// optionally named.
///
/// ```
/// use mmtensor_convert::{Input, InputSource};
///
/// let i = Input::parse("emb=shards/part-*.npy")?;
/// assert_eq!(i.name.as_deref(), Some("emb"));
/// assert!(matches!(i.source, InputSource::Glob(ref g) if g == "shards/part-*.npy"));
/// let j = Input::parse("weights.npz")?;
/// assert_eq!(j.name, None);
/// # Ok::<(), mmtensor_convert::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The tensor name (`NAME=` prefix). For a file holding several tensors (`.npz`,
    /// `.safetensors`) it is a prefix: tensor `key` becomes `NAME.key`; a file holding one
    /// tensor has it renamed to `NAME`.
    pub name: Option<String>,
    /// Where the data is.
    pub source: InputSource,
}

/// Where an [`Input`]'s data is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputSource {
    /// A `.npy`, `.npz` or `.safetensors` file, or a folder whose `*.npy` files are shards.
    Path(PathBuf),
    /// A glob pattern matching `.npy` shards (`*`, `?`, `[...]`).
    Glob(String),
    /// `.npy` shards concatenated along axis 0, in this order.
    Shards(Vec<PathBuf>),
}

impl InputSource {
    /// A path or a glob, by the one rule every input text follows (the command line's `PATH`
    /// and `NAME=PATH`, and the values of Python's `{"x": "shards/x-*.npy"}`): a text that names
    /// an existing path is that path; otherwise a text with `*`, `?` or `[` is a glob.
    ///
    /// ```
    /// use mmtensor_convert::InputSource;
    ///
    /// assert!(matches!(InputSource::from_text("npy/x-*.npy"), InputSource::Glob(_)));
    /// assert!(matches!(InputSource::from_text("x.npy"), InputSource::Path(_)));
    /// ```
    pub fn from_text(text: &str) -> InputSource {
        if !Path::new(text).exists() && text.contains(['*', '?', '[']) {
            InputSource::Glob(text.to_owned())
        } else {
            InputSource::Path(PathBuf::from(text))
        }
    }
}

impl Input {
    /// Parses a command-line input: `PATH`, `GLOB` or `NAME=PATH`/`NAME=GLOB`.
    ///
    /// A text that names an existing path is a path even if it contains `=`. Otherwise the text
    /// before the first `=` is the name. A text with `*`, `?` or `[` that is not an existing path
    /// is a glob.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty text, an empty name or an empty path.
    pub fn parse(text: &str) -> Result<Input> {
        let bad = |reason: &str| Error::InvalidInput {
            input: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(bad("empty input: give a file, a folder or a glob"));
        }
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) if !Path::new(text).exists() => {
                if name.is_empty() {
                    return Err(bad("empty name before `=`: write NAME=PATH"));
                }
                if rest.is_empty() {
                    return Err(bad("empty path after `=`: write NAME=PATH"));
                }
                (Some(name.to_owned()), rest)
            }
            _ => (None, text),
        };
        Ok(Input {
            name,
            source: InputSource::from_text(rest),
        })
    }

    /// An input for one path, named by default.
    pub fn path(path: impl Into<PathBuf>) -> Input {
        Input {
            name: None,
            source: InputSource::Path(path.into()),
        }
    }

    /// One tensor from `.npy` shards concatenated along axis 0, in the order given.
    pub fn shards(name: impl Into<String>, paths: Vec<PathBuf>) -> Input {
        Input {
            name: Some(name.into()),
            source: InputSource::Shards(paths),
        }
    }

    /// Sets the name (builder style).
    pub fn named(mut self, name: impl Into<String>) -> Input {
        self.name = Some(name.into());
        self
    }

    /// The argument as a user would write it, for messages.
    pub fn describe(&self) -> String {
        let src = match &self.source {
            InputSource::Path(p) => p.display().to_string(),
            InputSource::Glob(g) => g.clone(),
            InputSource::Shards(p) => format!("{} shards", p.len()),
        };
        match &self.name {
            Some(n) => format!("{n}={src}"),
            None => src,
        }
    }
}

/// Which dtype each tensor gets: one dtype for all, and per-tensor overrides.
///
/// Used twice in [`crate::ConvertOptions`]: as `dtype` (the output dtype: `all` applies to every
/// real floating-point tensor, F16/BF16/F32/F64, and leaves integer, bool, complex and fp8 tensors
/// alone; `NAME=DT` applies to that tensor whatever its dtype) and as `input_dtype` (how to read
/// raw void `.npy` data written through `ml_dtypes`: `all` applies to every void-dtype tensor,
/// `NAME=DT` reinterprets that tensor's elements as `DT`, which must have the stored element size).
///
/// ```
/// use mmtensor_convert::DtypeRules;
/// use mmtensor_format::Dtype;
///
/// let mut rules = DtypeRules::default();
/// rules.add("bf16")?;
/// rules.add("labels=int32")?;
/// assert_eq!(rules.all, Some(Dtype::BF16));
/// assert_eq!(rules.get("labels"), Some(Dtype::I32));
/// # Ok::<(), mmtensor_convert::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DtypeRules {
    /// The dtype for every tensor the rule set applies to.
    pub all: Option<Dtype>,
    /// Per-tensor dtypes, by output tensor name; a later rule for a name replaces an earlier one.
    pub per_tensor: Vec<(String, Dtype)>,
}

impl DtypeRules {
    /// Adds a rule written `DT` (for all) or `NAME=DT`. Dtypes are parsed with
    /// [`Dtype::parse_loose`]: `bf16`, `F32`, `float32`, `f4`, `<f8`, `bfloat16`...
    ///
    /// # Errors
    /// [`Error::DtypeRule`] when the dtype is unknown or the name is empty.
    pub fn add(&mut self, rule: &str) -> Result<&mut Self> {
        let (name, dt) = match rule.rsplit_once('=') {
            Some((name, dt)) => (Some(name), dt),
            None => (None, rule),
        };
        let dtype = Dtype::parse_loose(dt).ok_or_else(|| Error::DtypeRule {
            rule: rule.to_owned(),
            reason: format!(
                "unknown dtype `{dt}`: use a name such as f32, bf16, f16, f64, i32, u8 (NumPy names such as float32 work too)"
            ),
        })?;
        match name {
            Some("") => {
                return Err(Error::DtypeRule {
                    rule: rule.to_owned(),
                    reason: "empty tensor name before `=`: write NAME=DTYPE".into(),
                })
            }
            Some(name) => {
                self.per_tensor.retain(|(n, _)| n != name);
                self.per_tensor.push((name.to_owned(), dtype));
            }
            None => self.all = Some(dtype),
        }
        Ok(self)
    }

    /// The per-tensor dtype for `name`, if a rule names it.
    pub fn get(&self, name: &str) -> Option<Dtype> {
        self.per_tensor
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, d)| d)
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.per_tensor.is_empty()
    }
}

/// Orders file names so that digit runs compare as numbers: `part-2` before `part-10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let ta = trim_zeros(na);
                let tb = trim_zeros(nb);
                let ord = ta.len().cmp(&tb.len()).then(ta.cmp(tb)).then(da.cmp(&db));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_inputs() {
        assert_eq!(Input::parse("a.npy").unwrap(), Input::path("a.npy"));
        assert_eq!(
            Input::parse("x=dir/a.npy").unwrap(),
            Input::path("dir/a.npy").named("x")
        );
        assert!(matches!(
            Input::parse("d/*.npy").unwrap().source,
            InputSource::Glob(_)
        ));
        assert!(Input::parse("").is_err());
        assert!(Input::parse("=a.npy").is_err());
        assert!(Input::parse("x=").is_err());
    }

    #[test]
    fn rules() {
        let mut r = DtypeRules::default();
        r.add("a=f16")
            .unwrap()
            .add("a=bf16")
            .unwrap()
            .add("float32")
            .unwrap();
        assert_eq!(r.get("a"), Some(Dtype::BF16));
        assert_eq!(r.per_tensor.len(), 1);
        assert_eq!(r.all, Some(Dtype::F32));
        assert!(r.add("a=nope").is_err());
        assert!(r.add("=f4").is_err());
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["p10.npy", "p2.npy", "p1.npy", "p02.npy", "a.npy"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a.npy", "p1.npy", "p2.npy", "p02.npy", "p10.npy"]);
    }
}
