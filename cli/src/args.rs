//! The command line, read with `lexopt`: a command name, then its filter file and its options
//! (`--name value` or `--name=value`; `-h` is `--help`).

use std::fmt;

/// A usage error: what was wrong with the command line (or a file it names).
#[derive(Debug)]
pub struct Usage(String);

impl Usage {
    pub fn new(message: impl Into<String>) -> Usage {
        Usage(message.into())
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for Usage {
    fn from(error: lexopt::Error) -> Usage {
        Usage(error.to_string())
    }
}

/// One argument after the command.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// `--name` (or `-h`, as `help`).
    Option(String),
    Positional(String),
}

impl Arg {
    /// The error for an argument the command does not take.
    pub fn unexpected(self) -> Usage {
        match self {
            Arg::Option(name) => Usage(format!("unknown option --{name} (see --help)")),
            Arg::Positional(value) => Usage(format!("unexpected argument \"{value}\" (see --help)")),
        }
    }
}

pub struct Parser(lexopt::Parser);

impl Parser {
    pub fn from_env() -> Parser {
        Parser(lexopt::Parser::from_env())
    }

    #[cfg(test)]
    pub fn from_args(args: &[&str]) -> Parser {
        Parser(lexopt::Parser::from_args(args.iter().copied()))
    }

    /// The command: the first argument, if there is one.
    pub fn command(&mut self) -> Result<Option<String>, Usage> {
        Ok(match self.next()? {
            None => None,
            Some(Arg::Option(name)) if name == "help" => Some("help".into()),
            Some(Arg::Option(name)) => return Err(Usage(format!("a command comes first, not --{name} (see --help)"))),
            Some(Arg::Positional(command)) => Some(command),
        })
    }

    /// The next argument, or `None` at the end.
    pub fn next(&mut self) -> Result<Option<Arg>, Usage> {
        Ok(match self.0.next()? {
            None => None,
            Some(lexopt::Arg::Long(name)) => Some(Arg::Option(name.to_string())),
            Some(lexopt::Arg::Short('h')) => Some(Arg::Option("help".into())),
            Some(lexopt::Arg::Short(short)) => return Err(Usage(format!("unknown option -{short} (see --help)"))),
            Some(lexopt::Arg::Value(value)) => Some(Arg::Positional(text(value)?)),
        })
    }

    /// The value of option `name`, just read.
    pub fn value(&mut self, name: &str) -> Result<String, Usage> {
        let value = self.0.value().map_err(|_| Usage(format!("--{name} needs a value")))?;
        text(value)
    }

    /// The next positional argument, if any; anything after it is an error.
    pub fn value_or_end(&mut self) -> Result<Option<String>, Usage> {
        let value = match self.next()? {
            None => return Ok(None),
            Some(Arg::Positional(value)) => value,
            Some(other) => return Err(other.unexpected()),
        };
        match self.next()? {
            None => Ok(Some(value)),
            Some(other) => Err(other.unexpected()),
        }
    }
}

fn text(value: std::ffi::OsString) -> Result<String, Usage> {
    value.into_string().map_err(|raw| Usage(format!("not UTF-8: {}", raw.to_string_lossy())))
}

/// A configuration given inline, or read from a file with `@FILE` (as curl does).
pub fn inline_or_file(value: &str) -> Result<Vec<u8>, Usage> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| Usage(format!("cannot read {path}: {e}"))),
        None => Ok(value.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_values_either_way() {
        let mut parser = Parser::from_args(&["run", "f.wasm", "--config=a b", "--request", "r.http", "-h"]);
        assert_eq!(parser.command().unwrap().as_deref(), Some("run"));
        assert_eq!(parser.next().unwrap(), Some(Arg::Positional("f.wasm".into())));
        assert_eq!(parser.next().unwrap(), Some(Arg::Option("config".into())));
        assert_eq!(parser.value("config").unwrap(), "a b");
        assert_eq!(parser.next().unwrap(), Some(Arg::Option("request".into())));
        assert_eq!(parser.value("request").unwrap(), "r.http");
        assert_eq!(parser.next().unwrap(), Some(Arg::Option("help".into())));
        assert_eq!(parser.next().unwrap(), None);
    }

    #[test]
    fn a_missing_value_names_its_option() {
        let mut parser = Parser::from_args(&["--cache-dir"]);
        parser.next().unwrap();
        assert_eq!(parser.value("cache-dir").unwrap_err().to_string(), "--cache-dir needs a value");
    }
}
