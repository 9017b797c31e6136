//! The Krisp license client.
//!
//! * [`LicenseClient`]: e-mail code sign-in, device activation (or silent enrolment from the
//!   IT [`Policy`] file), license renewal and logout against the Krisp license server.
//! * [`SecretStore`]: refresh/device/license tokens live in the OS keyring
//!   ([`KeyringStore`], any keyring-core store) or, without one, a private file
//!   ([`FileStore`]); [`LicenseClient::backend`] says which.
//! * [`evaluate`]: the [`LicenseState`] as a pure function of the stored token, the
//!   embedded keys, this device's id and the trusted time. Tokens are verified offline with
//!   [`krisp_token`]; past the grace period noise removal stops and
//!   [`LicenseState::message`] says why and what to do.
//! * [`trusted_time`]: setting the clock back does not extend a license.
//! * [`RefreshPolicy`]: when to renew in the background, with backoff and jitter.
//!
//! ```
//! use krisp_license::{LicenseState, evaluate};
//! use krisp_token::KeySet;
//!
//! let state = evaluate(None, None, &KeySet::new(), "device-1", 1_700_000_000);
//! assert_eq!(state, LicenseState::Unlicensed);
//! assert!(!state.allows_noise_removal());
//! println!("{}", state.message());
//! ```
#![deny(missing_docs)]

mod client;
mod error;
mod policy;
mod state;
mod store;
mod time;

pub use client::{ClientConfig, Device, LicenseClient};
pub use error::{Error, Result};
pub use krisp_token;
pub use policy::{DEFAULT_POLICY_PATH, POLICY_PATH_ENV, Policy};
pub use state::{ExpiryReason, LicenseState, evaluate, fmt_time};
#[cfg(feature = "system-keyring")]
pub use store::install_system_keyring;
pub use store::{Backend, FileStore, KeyringStore, SERVICE, SecretStore, default_store};
pub use time::{
    Clock, ROLLBACK_TOLERANCE_SECS, RefreshPolicy, TrustedTime, random_jitter, trusted_time,
};
