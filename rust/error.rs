//! One error type for the core; the Python layer maps each kind to a Python exception.
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Incompatible shapes (-> ValueError naming both shapes and the op).
    Shape(String),
    /// A bad value, e.g. an out-of-range label or axis (-> ValueError).
    Value(String),
    /// An index out of bounds (-> IndexError).
    Index(String),
    /// Wrong kind of argument (-> TypeError).
    Type(String),
    /// An allocation larger than memory (-> MemoryError).
    Memory(String),
    /// Misuse of the autograd machinery, e.g. a second backward on a freed graph (-> RuntimeError).
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(s) | Error::Value(s) | Error::Index(s) | Error::Type(s) | Error::Memory(s) | Error::Runtime(s) => {
                f.write_str(s)
            }
        }
    }
}

impl std::error::Error for Error {}

#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => { return Err($crate::error::Error::$kind(format!($($arg)*))) };
}
