//! The built-in detector of card numbers (PAN) and sensitive authentication
//! data (SAD): the one place that decides whether bytes hold card data.
//!
//! The sidecar's masking engine masks what it finds (PCI DSS 3.3.1, 3.4.1);
//! the evidence engine ([`crate::evidence`]) scans exported audit records
//! with the same detector to show that nothing unmasked left the sidecar.
//! It is pure and allocation-free: [`Scanner`] walks the input from digit
//! run to digit run and yields non-overlapping finds in order.

mod issuers;
mod pan;
mod sad;
mod scan;

pub use issuers::{ISSUERS, IssuerRange, Lengths, card_brand};
pub use sad::SadKind;
pub use scan::{Find, Found, Scanner};

impl Found {
    /// The card brand (`visa`…) or SAD kind (`track2`, `cvv`…).
    pub fn kind(self) -> &'static str {
        match self {
            Found::Pan(brand) => brand,
            Found::Sad(kind) => kind.as_str(),
        }
    }

    /// `pan` or `sad`.
    pub fn class(self) -> &'static str {
        match self {
            Found::Pan(_) => "pan",
            Found::Sad(_) => "sad",
        }
    }
}
