//! The configuration file: its schema, how it is read and validated into typed
//! values, and how its problems are reported with a file position. This
//! module owns parsing and validation only; turning a valid configuration
//! into routing state is `snapshot`'s job.

mod model;
mod schema;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use model::{Admin, Config, Runtime};
pub(crate) use model::{
    Alpn, CertFiles, Endpoint, Health, HealthKind, Host, Limits, ListenerTls, Outlier, PoolTls,
    Protocol, Service, TlsVersion, UpstreamProtocol, Webhook,
};
pub(crate) use validate::{MAX_RETRIES, MAX_WEIGHT};

/// One thing wrong with a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Byte range in the file's text; `None` when the problem has no place (an
    /// empty file, an unreadable one).
    pub(crate) span: Option<Range<usize>>,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span: Some(span),
            message: message.into(),
        }
    }
}

/// Every problem found in one file, ready to print as `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub(crate) path: PathBuf,
    /// The file's text, kept to turn byte offsets into lines and columns.
    source_text: String,
    pub(crate) problems: Vec<Problem>,
}

impl ConfigError {
    fn single(path: &Path, text: String, problem: Problem) -> Self {
        Self {
            path: path.to_path_buf(),
            source_text: text,
            problems: vec![problem],
        }
    }

    /// The problems, one line each, as `file:line:col: message`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| match &p.span {
                Some(span) => {
                    let (line, col) = line_col(&self.source_text, span.start);
                    format!("{}:{line}:{col}: {}", self.path.display(), p.message)
                }
                None => format!("{}: {}", self.path.display(), p.message),
            })
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lines();
        let count = lines.len();
        write!(
            f,
            "{} problem{} in {}",
            count,
            if count == 1 { "" } else { "s" },
            self.path.display()
        )?;
        for line in lines {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Reads, parses and validates a configuration file, returning its text too.
/// On failure nothing is returned but the problems: a caller never sees a
/// half-valid configuration.
pub fn read(path: &Path) -> Result<(String, Config), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            path,
            String::new(),
            Problem {
                span: None,
                message: format!("cannot read the file: {e}"),
            },
        )
    })?;
    let config = parse(path, text.clone())?;
    Ok((text, config))
}

/// Parses and validates configuration text; `path` is used in messages only.
pub fn parse(path: &Path, text: String) -> Result<Config, ConfigError> {
    let raw: schema::Config = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => {
            let problem = Problem {
                span: e.span(),
                message: e.message().trim_end().replace('\n', " "),
            };
            return Err(ConfigError::single(path, text, problem));
        }
    };
    let mut problems = match validate::validate(&raw) {
        Ok(config) => return Ok(config),
        Err(problems) => problems,
    };
    problems.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
    Err(ConfigError {
        path: path.to_path_buf(),
        source_text: text,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = parse(Path::new("x.toml"), "[[listener]\n".into()).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("x.toml:1:"), "{}", lines[0]);
    }
}
