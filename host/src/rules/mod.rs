//! Rule chain.
