//! Which iptables rules transparent interception needs, as text for
//! `iptables-restore --noflush`: pure functions of the configuration and of
//! what `iptables-save` shows now, so the exact rules are unit-tested without
//! touching a network namespace.
//!
//! Everything cardgate installs lives in its own chains, which a restore
//! creates or flushes (`:CHAIN - [0:0]` under `--noflush`), plus one jump
//! from each table's OUTPUT chain that is only added when it is missing. One
//! restore per family applies a whole plan at once: the pod never runs with
//! half of the rules.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use cardgate_crds::config::SidecarConfig;
use cardgate_crds::pod::{SIDECAR_UID, TRANSPARENT_PORT};

use super::cidr::Cidr;

/// nat chain that decides which agent connections go to the sidecar.
pub const OUTPUT_CHAIN: &str = "CARDGATE_OUTPUT";
/// nat chain that rewrites a connection to the sidecar's transparent port.
pub const REDIRECT_CHAIN: &str = "CARDGATE_REDIRECT";
/// filter chain that drops every other packet to a target's addresses.
pub const DROP_CHAIN: &str = "CARDGATE_DROP";

/// The jump from nat OUTPUT into [`OUTPUT_CHAIN`] (rule text after `-A OUTPUT`).
const NAT_JUMP: &str = "-p tcp -m comment --comment \"cardgate: agent TCP to targets goes through the sidecar\" -j CARDGATE_OUTPUT";
/// The jump from filter OUTPUT into [`DROP_CHAIN`].
const FILTER_JUMP: &str = "-m comment --comment \"cardgate: no path to targets except through the sidecar\" -j CARDGATE_DROP";

/// IPv4 (iptables) or IPv6 (ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    Ipv4,
    /// ip6tables.
    Ipv6,
}

impl Family {
    /// Both families, in the order they are programmed.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// Name shown to users.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        }
    }
}

/// One address range of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Target name, for rule comments.
    pub target: String,
    /// Addresses the target answers on.
    pub cidr: Cidr,
    /// The target's port.
    pub port: u16,
    /// Redirect connections to the sidecar (a transparent target), or only
    /// drop direct traffic (an explicit target whose addresses are known).
    pub redirect: bool,
}

/// What the rules must achieve, taken from the rendered configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    /// The sidecar's transparent port (`proxy.transparentListen`).
    pub redirect_port: u16,
    /// The sidecar's UID, exempt from interception.
    pub sidecar_uid: i64,
    /// Target address ranges, in configuration order.
    pub destinations: Vec<Destination>,
}

/// Why a configuration cannot be turned into rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Interception was asked for but no target uses it.
    #[error(
        "no target is transparent, so there is nothing to intercept; set `transparent: true` on a target with upstream.addresses"
    )]
    NothingToIntercept,
    /// `proxy.transparentListen` is not an address.
    #[error("proxy.transparentListen {0:?} is not an address like 0.0.0.0:15001")]
    BadListen(String),
    /// An address of a target is not an address or range.
    #[error("target {target:?}: upstream.addresses entry {address:?} is not an address or range")]
    BadAddress {
        /// Target name.
        target: String,
        /// The entry.
        address: String,
    },
}

impl Interception {
    /// Reads the redirect port and every target address range. Transparent
    /// targets are redirected; the addresses of other targets, where known,
    /// are closed to everyone but the sidecar too, since nothing but the
    /// sidecar has a reason to reach them.
    pub fn from_config(config: &SidecarConfig) -> Result<Self, PlanError> {
        let redirect_port = match &config.proxy.transparent_listen {
            Some(l) => l
                .parse::<SocketAddr>()
                .map_err(|_| PlanError::BadListen(l.clone()))?
                .port(),
            None => TRANSPARENT_PORT,
        };
        let mut destinations = Vec::new();
        for t in &config.targets {
            for a in &t.upstream.addresses {
                let cidr = Cidr::parse(a).ok_or_else(|| PlanError::BadAddress {
                    target: t.name.clone(),
                    address: a.clone(),
                })?;
                destinations.push(Destination {
                    target: t.name.clone(),
                    cidr,
                    port: t.upstream.port,
                    redirect: t.transparent,
                });
            }
        }
        if !destinations.iter().any(|d| d.redirect) {
            return Err(PlanError::NothingToIntercept);
        }
        Ok(Self {
            redirect_port,
            sidecar_uid: SIDECAR_UID,
            destinations,
        })
    }

    /// The ranges of one family.
    pub fn destinations(&self, family: Family) -> impl Iterator<Item = &Destination> {
        self.destinations
            .iter()
            .filter(move |d| d.cidr.is_ipv4() == (family == Family::Ipv4))
    }
}

/// The rules of one table as `iptables-save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Declared chains (built-in and user-defined).
    pub chains: BTreeSet<String>,
    /// Rules in order, as (chain, rule text after `-A CHAIN `).
    pub rules: Vec<(String, String)>,
}

/// The nat and filter tables of one family as `iptables-save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// The nat table.
    pub nat: Table,
    /// The filter table.
    pub filter: Table,
}

/// Our chains per table.
const NAT_CHAINS: [&str; 2] = [OUTPUT_CHAIN, REDIRECT_CHAIN];
const FILTER_CHAINS: [&str; 1] = [DROP_CHAIN];

fn jumps_to<'a>(rule: &str, chains: &'a [&'a str]) -> Option<&'a str> {
    let target = rule
        .strip_prefix("-j ")
        .or_else(|| rule.rsplit_once(" -j ").map(|(_, t)| t))?
        .split_whitespace()
        .next()?;
    chains.iter().copied().find(|c| *c == target)
}

impl Table {
    fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains(chain)
    }

    /// Rules outside our chains that jump into one of them.
    fn jumps<'a>(&'a self, ours: &'a [&'a str]) -> impl Iterator<Item = &'a (String, String)> {
        self.rules.iter().filter(move |(chain, rule)| {
            !ours.contains(&chain.as_str()) && jumps_to(rule, ours).is_some()
        })
    }

    fn ours<'a>(&'a self, ours: &'a [&'a str]) -> impl Iterator<Item = &'a (String, String)> {
        self.rules.iter().filter(move |(chain, rule)| {
            ours.contains(&chain.as_str()) || jumps_to(rule, ours).is_some()
        })
    }
}

impl Saved {
    /// Parses `iptables-save` output; tables other than nat and filter, and
    /// anything that is not a chain or rule line, are ignored.
    pub fn parse(text: &str) -> Self {
        let mut saved = Saved::default();
        let mut table: Option<&mut Table> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = match name.trim() {
                    "nat" => Some(&mut saved.nat),
                    "filter" => Some(&mut saved.filter),
                    _ => None,
                };
                continue;
            }
            let Some(t) = table.as_deref_mut() else {
                continue;
            };
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.insert(name.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some((chain, rule)) = rest.split_once(' ')
            {
                t.rules.push((chain.to_string(), rule.to_string()));
            }
        }
        saved
    }

    /// Whether any of cardgate's chains or jumps is present.
    pub fn has_ours(&self) -> bool {
        NAT_CHAINS.iter().any(|c| self.nat.has_chain(c))
            || FILTER_CHAINS.iter().any(|c| self.filter.has_chain(c))
            || self.nat.jumps(&NAT_CHAINS).next().is_some()
            || self.filter.jumps(&FILTER_CHAINS).next().is_some()
    }

    /// Number of rules that are not cardgate's (someone else uses this
    /// backend in the namespace).
    pub fn foreign_rules(&self) -> usize {
        let count = |t: &Table, ours: &[&str]| {
            t.rules
                .iter()
                .filter(|(chain, rule)| {
                    !ours.contains(&chain.as_str()) && jumps_to(rule, ours).is_none()
                })
                .count()
        };
        count(&self.nat, &NAT_CHAINS) + count(&self.filter, &FILTER_CHAINS)
    }

    /// cardgate's rules in `iptables-save` form, per table: what is
    /// installed.
    pub fn ours_text(&self) -> String {
        let mut out = String::new();
        for (name, table, ours) in [
            ("nat", &self.nat, &NAT_CHAINS[..]),
            ("filter", &self.filter, &FILTER_CHAINS[..]),
        ] {
            let rules: Vec<_> = table.ours(ours).collect();
            if rules.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{name}");
            for (chain, rule) in rules {
                let _ = writeln!(out, "-A {chain} {rule}");
            }
        }
        out
    }
}

/// The restore input that installs (or refreshes) the rules of one family,
/// given what is installed now. Applying it twice leaves the same rules as
/// applying it once.
pub fn install(plan: &Interception, family: Family, current: &Saved) -> String {
    let uid = plan.sidecar_uid;
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };

    line("*nat");
    line(&format!(":{OUTPUT_CHAIN} - [0:0]"));
    line(&format!(":{REDIRECT_CHAIN} - [0:0]"));
    line(&format!(
        "-A {REDIRECT_CHAIN} -p tcp -m comment --comment \"cardgate: to the transparent port of the sidecar\" -j REDIRECT --to-ports {}",
        plan.redirect_port
    ));
    line(&format!(
        "-A {OUTPUT_CHAIN} -o lo -m comment --comment \"cardgate: loopback is not intercepted\" -j RETURN"
    ));
    line(&format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {uid} -m comment --comment \"cardgate: connections of the sidecar are not intercepted\" -j RETURN"
    ));
    for d in plan.destinations(family).filter(|d| d.redirect) {
        line(&format!(
            "-A {OUTPUT_CHAIN} -d {} -p tcp -m tcp --dport {} -m comment --comment \"cardgate: target {}\" -j {REDIRECT_CHAIN}",
            d.cidr, d.port, d.target
        ));
    }
    for l in jump(&current.nat, &NAT_CHAINS, NAT_JUMP) {
        line(&l);
    }
    line("COMMIT");

    line("*filter");
    line(&format!(":{DROP_CHAIN} - [0:0]"));
    line(&format!(
        "-A {DROP_CHAIN} -o lo -m comment --comment \"cardgate: loopback and redirected connections pass\" -j RETURN"
    ));
    line(&format!(
        "-A {DROP_CHAIN} -m owner --uid-owner {uid} -m comment --comment \"cardgate: the sidecar reaches targets\" -j RETURN"
    ));
    line(&format!(
        "-A {DROP_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"cardgate: packets of connections already admitted\" -j RETURN"
    ));
    if family == Family::Ipv6 {
        // Neighbour discovery is sent by the kernel, not by a process, and an
        // on-link target's address is also its neighbour-discovery address.
        for (kind, name) in [(135, "solicitation"), (136, "advertisement")] {
            line(&format!(
                "-A {DROP_CHAIN} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -m comment --comment \"cardgate: neighbour {name}\" -j RETURN"
            ));
        }
    }
    for d in plan.destinations(family) {
        line(&format!(
            "-A {DROP_CHAIN} -d {} -m comment --comment \"cardgate: only the sidecar reaches target {}\" -j DROP",
            d.cidr, d.target
        ));
    }
    for l in jump(&current.filter, &FILTER_CHAINS, FILTER_JUMP) {
        line(&l);
    }
    line("COMMIT");
    out
}

/// Restore lines that leave exactly one `jump` at the top of OUTPUT: none
/// when it is already there, otherwise every jump into our chains is deleted
/// (duplicates, or ones left further down by someone else's rules) and one
/// is inserted first.
fn jump(table: &Table, ours: &[&str], jump: &str) -> Vec<String> {
    let first = table
        .rules
        .iter()
        .find(|(chain, _)| chain == "OUTPUT")
        .map(|(_, rule)| rule.as_str());
    let existing: Vec<_> = table.jumps(ours).collect();
    if existing.len() == 1 && first == Some(jump) {
        return Vec::new();
    }
    let mut lines: Vec<String> = existing
        .iter()
        .map(|(chain, rule)| format!("-D {chain} {rule}"))
        .collect();
    lines.push(format!("-I OUTPUT 1 {jump}"));
    lines
}

/// The restore input that removes exactly cardgate's jumps and chains, or
/// `None` when none of them is installed.
pub fn cleanup(current: &Saved) -> Option<String> {
    if !current.has_ours() {
        return None;
    }
    let mut out = String::new();
    for (name, table, ours) in [
        ("nat", &current.nat, &NAT_CHAINS[..]),
        ("filter", &current.filter, &FILTER_CHAINS[..]),
    ] {
        let present: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|c| table.has_chain(c))
            .collect();
        let jumps: Vec<_> = table.jumps(ours).collect();
        if present.is_empty() && jumps.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{name}");
        for (chain, rule) in jumps {
            let _ = writeln!(out, "-D {chain} {rule}");
        }
        // Flush all before deleting any: our chains jump into each other.
        for c in &present {
            let _ = writeln!(out, "-F {c}");
        }
        for c in &present {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {name: p}
identity:
  issuers: [{issuer: "https://issuer.example", audiences: [cardgate], jwksFile: /k.json}]
targets:
  - name: payments-db
    transparent: true
    upstream: {host: payments-db.payments.svc, port: 5432, addresses: [10.96.0.7, "fd00:10:96::7"]}
    credentials: {username: u, passwordFile: /p}
  - name: ledger
    transparent: true
    upstream: {host: ledger.example, port: 6432, addresses: [192.0.2.0/28]}
    credentials: {username: u, passwordFile: /p}
  - name: warehouse
    listen: 127.0.0.1:15433
    upstream: {host: wh.example, port: 5432, addresses: [198.51.100.9]}
    credentials: {username: u, passwordFile: /p}
proxy:
  transparentListen: 0.0.0.0:15001
"#;

    fn plan() -> Interception {
        let config = SidecarConfig::from_text(CONFIG, "test").unwrap();
        Interception::from_config(&config).unwrap()
    }

    const IPV4_FRESH: &str = r#"*nat
:CARDGATE_OUTPUT - [0:0]
:CARDGATE_REDIRECT - [0:0]
-A CARDGATE_REDIRECT -p tcp -m comment --comment "cardgate: to the transparent port of the sidecar" -j REDIRECT --to-ports 15001
-A CARDGATE_OUTPUT -o lo -m comment --comment "cardgate: loopback is not intercepted" -j RETURN
-A CARDGATE_OUTPUT -m owner --uid-owner 2102 -m comment --comment "cardgate: connections of the sidecar are not intercepted" -j RETURN
-A CARDGATE_OUTPUT -d 10.96.0.7/32 -p tcp -m tcp --dport 5432 -m comment --comment "cardgate: target payments-db" -j CARDGATE_REDIRECT
-A CARDGATE_OUTPUT -d 192.0.2.0/28 -p tcp -m tcp --dport 6432 -m comment --comment "cardgate: target ledger" -j CARDGATE_REDIRECT
-I OUTPUT 1 -p tcp -m comment --comment "cardgate: agent TCP to targets goes through the sidecar" -j CARDGATE_OUTPUT
COMMIT
*filter
:CARDGATE_DROP - [0:0]
-A CARDGATE_DROP -o lo -m comment --comment "cardgate: loopback and redirected connections pass" -j RETURN
-A CARDGATE_DROP -m owner --uid-owner 2102 -m comment --comment "cardgate: the sidecar reaches targets" -j RETURN
-A CARDGATE_DROP -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "cardgate: packets of connections already admitted" -j RETURN
-A CARDGATE_DROP -d 10.96.0.7/32 -m comment --comment "cardgate: only the sidecar reaches target payments-db" -j DROP
-A CARDGATE_DROP -d 192.0.2.0/28 -m comment --comment "cardgate: only the sidecar reaches target ledger" -j DROP
-A CARDGATE_DROP -d 198.51.100.9/32 -m comment --comment "cardgate: only the sidecar reaches target warehouse" -j DROP
-I OUTPUT 1 -m comment --comment "cardgate: no path to targets except through the sidecar" -j CARDGATE_DROP
COMMIT
"#;

    #[test]
    fn ipv4_rules_on_a_fresh_namespace() {
        assert_eq!(
            install(&plan(), Family::Ipv4, &Saved::default()),
            IPV4_FRESH
        );
    }

    #[test]
    fn ipv6_rules_keep_neighbour_discovery_and_only_ipv6_targets() {
        let expected = r#"*nat
:CARDGATE_OUTPUT - [0:0]
:CARDGATE_REDIRECT - [0:0]
-A CARDGATE_REDIRECT -p tcp -m comment --comment "cardgate: to the transparent port of the sidecar" -j REDIRECT --to-ports 15001
-A CARDGATE_OUTPUT -o lo -m comment --comment "cardgate: loopback is not intercepted" -j RETURN
-A CARDGATE_OUTPUT -m owner --uid-owner 2102 -m comment --comment "cardgate: connections of the sidecar are not intercepted" -j RETURN
-A CARDGATE_OUTPUT -d fd00:10:96::7/128 -p tcp -m tcp --dport 5432 -m comment --comment "cardgate: target payments-db" -j CARDGATE_REDIRECT
-I OUTPUT 1 -p tcp -m comment --comment "cardgate: agent TCP to targets goes through the sidecar" -j CARDGATE_OUTPUT
COMMIT
*filter
:CARDGATE_DROP - [0:0]
-A CARDGATE_DROP -o lo -m comment --comment "cardgate: loopback and redirected connections pass" -j RETURN
-A CARDGATE_DROP -m owner --uid-owner 2102 -m comment --comment "cardgate: the sidecar reaches targets" -j RETURN
-A CARDGATE_DROP -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "cardgate: packets of connections already admitted" -j RETURN
-A CARDGATE_DROP -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m comment --comment "cardgate: neighbour solicitation" -j RETURN
-A CARDGATE_DROP -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m comment --comment "cardgate: neighbour advertisement" -j RETURN
-A CARDGATE_DROP -d fd00:10:96::7/128 -m comment --comment "cardgate: only the sidecar reaches target payments-db" -j DROP
-I OUTPUT 1 -m comment --comment "cardgate: no path to targets except through the sidecar" -j CARDGATE_DROP
COMMIT
"#;
        assert_eq!(install(&plan(), Family::Ipv6, &Saved::default()), expected);
    }

    /// What `iptables-save` prints after [`IPV4_FRESH`] was applied to a
    /// namespace where something else already had a rule.
    const IPV4_INSTALLED: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CARDGATE_DROP - [0:0]
-A OUTPUT -m comment --comment "cardgate: no path to targets except through the sidecar" -j CARDGATE_DROP
-A OUTPUT -d 203.0.113.1/32 -j ACCEPT
-A CARDGATE_DROP -o lo -m comment --comment "cardgate: loopback and redirected connections pass" -j RETURN
-A CARDGATE_DROP -d 10.96.0.7/32 -m comment --comment "cardgate: only the sidecar reaches target payments-db" -j DROP
COMMIT
*mangle
:OUTPUT ACCEPT [0:0]
-A OUTPUT -j MARK --set-xmark 0x1/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CARDGATE_OUTPUT - [0:0]
:CARDGATE_REDIRECT - [0:0]
-A OUTPUT -p tcp -m comment --comment "cardgate: agent TCP to targets goes through the sidecar" -j CARDGATE_OUTPUT
-A CARDGATE_OUTPUT -d 10.96.0.7/32 -p tcp -m tcp --dport 5432 -m comment --comment "cardgate: target payments-db" -j CARDGATE_REDIRECT
-A CARDGATE_REDIRECT -p tcp -m comment --comment "cardgate: to the transparent port of the sidecar" -j REDIRECT --to-ports 15001
COMMIT
"#;

    #[test]
    fn save_output_is_parsed_per_table() {
        let saved = Saved::parse(IPV4_INSTALLED);
        assert!(saved.nat.chains.contains(OUTPUT_CHAIN));
        assert!(saved.filter.chains.contains(DROP_CHAIN));
        assert_eq!(saved.nat.rules.len(), 3);
        assert_eq!(
            saved.filter.rules.len(),
            4,
            "the mangle table is not filter"
        );
        assert!(saved.has_ours());
        assert_eq!(saved.foreign_rules(), 1);
        assert!(!Saved::parse("").has_ours());
    }

    #[test]
    fn a_second_run_adds_no_jumps() {
        let text = install(&plan(), Family::Ipv4, &Saved::parse(IPV4_INSTALLED));
        assert!(!text.contains("-I OUTPUT"), "{text}");
        assert!(!text.contains("-D OUTPUT"), "{text}");
        // The chains are still declared, so the restore flushes and refills them.
        let without_jumps: String = IPV4_FRESH
            .lines()
            .filter(|l| !l.starts_with("-I OUTPUT"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(text, without_jumps);
    }

    #[test]
    fn misplaced_or_duplicate_jumps_are_replaced_by_one_at_the_top() {
        let saved = Saved::parse(
            "*filter\n:OUTPUT ACCEPT [0:0]\n:CARDGATE_DROP - [0:0]\n\
             -A OUTPUT -j ACCEPT\n\
             -A OUTPUT -m comment --comment \"cardgate: no path to targets except through the sidecar\" -j CARDGATE_DROP\n\
             -A OUTPUT -j CARDGATE_DROP\n\
             COMMIT\n",
        );
        let text = install(&plan(), Family::Ipv4, &saved);
        let filter = text.split("*filter").nth(1).unwrap();
        let jumps: Vec<&str> = filter.lines().filter(|l| l.contains(" OUTPUT ")).collect();
        assert_eq!(
            jumps,
            [
                "-D OUTPUT -m comment --comment \"cardgate: no path to targets except through the sidecar\" -j CARDGATE_DROP",
                "-D OUTPUT -j CARDGATE_DROP",
                "-I OUTPUT 1 -m comment --comment \"cardgate: no path to targets except through the sidecar\" -j CARDGATE_DROP",
            ]
        );
    }

    #[test]
    fn every_rule_is_commented() {
        for family in Family::ALL {
            let text = install(&plan(), family, &Saved::default());
            for l in text.lines().filter(|l| l.starts_with('-')) {
                assert!(l.contains("-m comment --comment \"cardgate: "), "{l}");
            }
        }
    }

    #[test]
    fn cleanup_removes_exactly_our_jumps_and_chains() {
        let text = cleanup(&Saved::parse(IPV4_INSTALLED)).unwrap();
        assert_eq!(
            text,
            r#"*nat
-D OUTPUT -p tcp -m comment --comment "cardgate: agent TCP to targets goes through the sidecar" -j CARDGATE_OUTPUT
-F CARDGATE_OUTPUT
-F CARDGATE_REDIRECT
-X CARDGATE_OUTPUT
-X CARDGATE_REDIRECT
COMMIT
*filter
-D OUTPUT -m comment --comment "cardgate: no path to targets except through the sidecar" -j CARDGATE_DROP
-F CARDGATE_DROP
-X CARDGATE_DROP
COMMIT
"#
        );
        assert_eq!(cleanup(&Saved::default()), None);
    }

    #[test]
    fn installed_rules_are_listed_without_foreign_ones() {
        let listed = Saved::parse(IPV4_INSTALLED).ours_text();
        assert!(!listed.contains("203.0.113.1"), "{listed}");
        assert!(!listed.contains("MARK"), "{listed}");
        assert_eq!(listed.lines().filter(|l| l.starts_with("-A")).count(), 6);
    }

    #[test]
    fn configuration_problems_are_named() {
        let mut config = SidecarConfig::from_text(CONFIG, "test").unwrap();
        config.proxy.transparent_listen = Some("15001".into());
        assert_eq!(
            Interception::from_config(&config),
            Err(PlanError::BadListen("15001".into()))
        );
        config.proxy.transparent_listen = None;
        assert_eq!(
            Interception::from_config(&config).unwrap().redirect_port,
            TRANSPARENT_PORT
        );
        config.targets[0]
            .upstream
            .addresses
            .push("10.0.0.0/40".into());
        assert!(matches!(
            Interception::from_config(&config),
            Err(PlanError::BadAddress { target, .. }) if target == "payments-db"
        ));
        for t in &mut config.targets {
            t.transparent = false;
            t.upstream.addresses.retain(|a| a != "10.0.0.0/40");
        }
        assert_eq!(
            Interception::from_config(&config),
            Err(PlanError::NothingToIntercept)
        );
    }

    #[test]
    fn explicit_targets_are_dropped_but_not_redirected() {
        let p = plan();
        let warehouse: Vec<_> = p
            .destinations
            .iter()
            .filter(|d| d.target == "warehouse")
            .collect();
        assert_eq!(warehouse.len(), 1);
        assert!(!warehouse[0].redirect);
        let text = install(&p, Family::Ipv4, &Saved::default());
        assert!(!text.contains("198.51.100.9/32 -p tcp"));
        assert!(text.contains("-d 198.51.100.9/32 -m comment"));
    }
}
