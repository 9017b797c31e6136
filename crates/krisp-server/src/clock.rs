//! Time source: the clock shared with the license client (krisp-token), so both sides judge
//! token times the same way. Production reads the system clock; tests move a manual one.

pub use krisp_token::Clock;
