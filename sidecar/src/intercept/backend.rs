//! Which iptables backend programs the pod: nf_tables (`iptables-nft`) or
//! the legacy x_tables interface (`iptables-legacy`). Both are active in the
//! kernel at once, so rules work with either; what matters is to use one that
//! the node's kernel supports, and to keep using the one cardgate's rules are
//! already in (a re-run or a cleanup must find them).

use std::process::Command;

use super::plan::{Family, Saved};

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft`: the nf_tables kernel API.
    Nft,
    /// `iptables-legacy`: the x_tables kernel API.
    Legacy,
    /// Plain `iptables`, for images that ship only one flavour unsuffixed.
    Default,
}

impl Backend {
    /// The two flavours probed, preferred first.
    pub const PROBED: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// The program for `family` and `tool` (`save` or `restore`), e.g.
    /// `ip6tables-nft-restore`.
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        match self {
            Self::Nft => format!("{base}-nft-{tool}"),
            Self::Legacy => format!("{base}-legacy-{tool}"),
            Self::Default => format!("{base}-{tool}"),
        }
    }

    /// Name shown to users.
    pub fn label(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft (nf_tables)",
            Self::Legacy => "iptables-legacy (x_tables)",
            Self::Default => "iptables",
        }
    }
}

/// What probing one backend found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The backend.
    pub backend: Backend,
    /// Its IPv4 tables, or `None` when `iptables-save` failed (program
    /// missing, or the kernel lacks the interface).
    pub saved: Option<Saved>,
}

/// Reads `iptables -V`'s `(nf_tables)` or `(legacy)`: the image's default.
pub fn parse_version(text: &str) -> Option<Backend> {
    if text.contains("(nf_tables)") {
        Some(Backend::Nft)
    } else if text.contains("(legacy)") {
        Some(Backend::Legacy)
    } else {
        None
    }
}

/// Picks the backend: the one that already holds cardgate's rules, else one
/// that something else in the namespace already uses, else the image's
/// default (`iptables -V`), else the first that works. `None` when no
/// backend can even list its rules.
pub fn choose(probes: &[Probe], default: Option<Backend>) -> Option<Backend> {
    let usable = || {
        probes
            .iter()
            .filter_map(|p| p.saved.as_ref().map(|s| (p.backend, s)))
    };
    usable()
        .find(|(_, s)| s.has_ours())
        .or_else(|| usable().find(|(_, s)| s.foreign_rules() > 0))
        .map(|(b, _)| b)
        .or_else(|| default.filter(|d| usable().any(|(b, _)| b == *d)))
        .or_else(|| usable().map(|(b, _)| b).next())
}

/// Runs the backend's `*-save` for `family` and returns what it printed, or
/// why it could not.
pub fn save(backend: Backend, family: Family) -> Result<String, String> {
    let program = backend.program(family, "save");
    match Command::new(&program).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Probes every flavour and asks `iptables -V` for the default, then
/// [`choose`]s.
pub fn detect() -> Option<Backend> {
    let mut probes: Vec<Probe> = Backend::PROBED
        .iter()
        .map(|&backend| Probe {
            backend,
            saved: save(backend, Family::Ipv4).ok().map(|t| Saved::parse(&t)),
        })
        .collect();
    if probes.iter().all(|p| p.saved.is_none()) {
        probes.push(Probe {
            backend: Backend::Default,
            saved: save(Backend::Default, Family::Ipv4)
                .ok()
                .map(|t| Saved::parse(&t)),
        });
    }
    let default = Command::new("iptables")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
    choose(&probes, default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(backend: Backend, save: Option<&str>) -> Probe {
        Probe {
            backend,
            saved: save.map(Saved::parse),
        }
    }

    const EMPTY: &str = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    const OURS: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n:CARDGATE_OUTPUT - [0:0]\nCOMMIT\n";
    const FOREIGN: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n";

    #[test]
    fn version_output_names_the_default() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some(Backend::Nft)
        );
        assert_eq!(
            parse_version("iptables v1.8.7 (legacy)\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(parse_version("iptables v1.4.21\n"), None);
    }

    #[test]
    fn the_backend_with_our_rules_wins() {
        let probes = [
            probe(Backend::Nft, Some(FOREIGN)),
            probe(Backend::Legacy, Some(OURS)),
        ];
        assert_eq!(choose(&probes, Some(Backend::Nft)), Some(Backend::Legacy));
    }

    #[test]
    fn then_the_backend_someone_else_uses() {
        let probes = [
            probe(Backend::Nft, Some(EMPTY)),
            probe(Backend::Legacy, Some(FOREIGN)),
        ];
        assert_eq!(choose(&probes, Some(Backend::Nft)), Some(Backend::Legacy));
    }

    #[test]
    fn then_the_image_default_if_the_kernel_has_it() {
        let probes = [
            probe(Backend::Nft, Some(EMPTY)),
            probe(Backend::Legacy, Some(EMPTY)),
        ];
        assert_eq!(
            choose(&probes, Some(Backend::Legacy)),
            Some(Backend::Legacy)
        );
        let no_nft = [
            probe(Backend::Nft, None),
            probe(Backend::Legacy, Some(EMPTY)),
        ];
        assert_eq!(choose(&no_nft, Some(Backend::Nft)), Some(Backend::Legacy));
        assert_eq!(choose(&no_nft, None), Some(Backend::Legacy));
    }

    #[test]
    fn nothing_usable_is_none() {
        let probes = [probe(Backend::Nft, None), probe(Backend::Legacy, None)];
        assert_eq!(choose(&probes, Some(Backend::Nft)), None);
    }

    #[test]
    fn program_names() {
        assert_eq!(
            Backend::Nft.program(Family::Ipv6, "restore"),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.program(Family::Ipv4, "save"),
            "iptables-legacy-save"
        );
        assert_eq!(
            Backend::Default.program(Family::Ipv4, "restore"),
            "iptables-restore"
        );
    }
}
