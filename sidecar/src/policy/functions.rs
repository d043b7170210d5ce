//! The one reviewed list of functions whose call changes how a statement is
//! classified, and the session settings that count as harmless.
//!
//! A function is looked up by the last part of its name, lower-cased, whatever
//! schema qualifies it: a user-defined `myschema.pg_read_file` is treated like
//! the built-in (fail closed). `docs/statements.md` explains every entry; a
//! test keeps that page and this list in step.

use cardgate_crds::v1alpha1::StatementClass;

/// What calling a listed function does beyond computing a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Side effects outside the data (files, programs, other servers, other
    /// sessions, server state), or SQL hidden in a string the policy cannot
    /// see: the statement is `dangerous`.
    Dangerous,
    /// Changes state other sessions see (sequences, notifications): `write`.
    Write,
    /// Writes the relation named by the first argument (a sequence).
    WritesRelationArg,
    /// Reads large objects: reported as a read of `pg_catalog.pg_largeobject`.
    ReadsLargeObjects,
    /// Writes large objects: a write of `pg_catalog.pg_largeobject`.
    WritesLargeObjects,
    /// `set_config`: harmless only for settings on [`HARMLESS_SETTINGS`].
    SetConfig,
    /// Tells what the catalog or the server is (its version, this session's
    /// schema, a type's name) and nothing about other sessions, files or
    /// table data: makes a query `metadata` (see [`METADATA_CATALOGS`]).
    Metadata,
    /// `current_setting`: metadata for settings on [`READABLE_SETTINGS`].
    ReadSetting,
    /// Computes from its arguments only: allowed in a `metadata` query,
    /// which it does not make metadata on its own.
    Pure,
}

/// How a list entry names functions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Name {
    /// Exactly this name.
    Exact(&'static str),
    /// Every name that starts with this (a family such as `dblink*`).
    Prefix(&'static str),
}

/// One reviewed entry: which functions, what they do, and why it matters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub name: Name,
    pub effect: Effect,
    pub why: &'static str,
}

const fn exact(name: &'static str, effect: Effect, why: &'static str) -> Entry {
    Entry {
        name: Name::Exact(name),
        effect,
        why,
    }
}

const fn prefix(name: &'static str, effect: Effect, why: &'static str) -> Entry {
    Entry {
        name: Name::Prefix(name),
        effect,
        why,
    }
}

use Effect::*;

const FILES: &str = "reads or writes files on the database server";
const SIGNALS: &str = "signals or stops other sessions or the server";
const SERVER: &str = "changes server-wide state (configuration, WAL, backups, statistics)";
const REPLICATION: &str = "reads the change stream of every table or manages replication";
const REMOTE: &str = "connects to another server or runs SQL text the policy cannot see";
const RAW: &str = "reads raw pages or WAL, bypassing table-level rules";
const TIMING: &str = "holds the session and its locks; the classic blind-injection probe";
const OTHER_SESSIONS: &str = "reveals other sessions' queries, users and addresses";
const FACT: &str = "names the server, this session or a catalog object (metadata)";
const PURE: &str = "computes from its arguments only (allowed in metadata queries)";

/// The reviewed list. Order does not matter; names never overlap.
pub(crate) const FUNCTIONS: &[Entry] = &[
    // Server files.
    prefix("pg_read_", Dangerous, FILES),
    exact("pg_stat_file", Dangerous, FILES),
    prefix("pg_ls_", Dangerous, FILES),
    exact("pg_current_logfile", Dangerous, FILES),
    prefix("pg_file_", Dangerous, FILES),
    exact("pg_logdir_ls", Dangerous, FILES),
    exact("lo_import", Dangerous, FILES),
    exact("lo_export", Dangerous, FILES),
    // Other sessions and the server.
    exact("pg_terminate_backend", Dangerous, SIGNALS),
    exact("pg_cancel_backend", Dangerous, SIGNALS),
    exact("pg_reload_conf", Dangerous, SERVER),
    exact("pg_rotate_logfile", Dangerous, SERVER),
    exact("pg_log_backend_memory_contexts", Dangerous, SIGNALS),
    exact("pg_promote", Dangerous, SERVER),
    prefix("pg_wal_replay_", Dangerous, SERVER),
    exact("pg_switch_wal", Dangerous, SERVER),
    prefix("pg_backup_", Dangerous, SERVER),
    exact("pg_start_backup", Dangerous, SERVER),
    exact("pg_stop_backup", Dangerous, SERVER),
    prefix("pg_stat_reset", Dangerous, SERVER),
    prefix("pg_restore_", Dangerous, SERVER),
    prefix("pg_clear_", Dangerous, SERVER),
    exact("pg_import_system_collations", Dangerous, SERVER),
    // Replication: slots and logical decoding expose every table's changes
    // (`pg_create_` also covers pg_create_restore_point).
    prefix("pg_create_", Dangerous, REPLICATION),
    exact("pg_drop_replication_slot", Dangerous, REPLICATION),
    prefix("pg_copy_", Dangerous, REPLICATION),
    prefix("pg_replication_", Dangerous, REPLICATION),
    prefix("pg_logical_", Dangerous, REPLICATION),
    exact("pg_sync_replication_slots", Dangerous, REPLICATION),
    // Raw storage (pageinspect, pg_walinspect).
    exact("get_raw_page", Dangerous, RAW),
    prefix("pg_get_wal_", Dangerous, RAW),
    // Other servers and SQL hidden in strings.
    prefix("dblink", Dangerous, REMOTE),
    prefix("query_to_xml", Dangerous, REMOTE),
    prefix("table_to_xml", Dangerous, REMOTE),
    prefix("cursor_to_xml", Dangerous, REMOTE),
    prefix("schema_to_xml", Dangerous, REMOTE),
    prefix("database_to_xml", Dangerous, REMOTE),
    exact("ts_stat", Dangerous, REMOTE),
    prefix("crosstab", Dangerous, REMOTE),
    exact("connectby", Dangerous, REMOTE),
    exact("xpath_table", Dangerous, REMOTE),
    // Time.
    prefix("pg_sleep", Dangerous, TIMING),
    // Other sessions (the functions behind pg_stat_activity).
    exact("pg_stat_get_activity", Dangerous, OTHER_SESSIONS),
    prefix("pg_stat_get_backend_", Dangerous, OTHER_SESSIONS),
    exact("pg_blocking_pids", Dangerous, OTHER_SESSIONS),
    // What drivers and ORMs read to set themselves up.
    exact("version", Metadata, FACT),
    exact("current_schema", Metadata, FACT),
    exact("current_schemas", Metadata, FACT),
    exact("current_database", Metadata, FACT),
    exact("current_catalog", Metadata, FACT),
    exact("current_user", Metadata, FACT),
    exact("current_role", Metadata, FACT),
    exact("session_user", Metadata, FACT),
    exact("pg_backend_pid", Metadata, FACT),
    exact("pg_is_in_recovery", Metadata, FACT),
    exact("format_type", Metadata, FACT),
    exact("pg_typeof", Metadata, FACT),
    exact("pg_table_is_visible", Metadata, FACT),
    exact("pg_type_is_visible", Metadata, FACT),
    exact("to_regtype", Metadata, FACT),
    exact("to_regtypemod", Metadata, FACT),
    exact("to_regclass", Metadata, FACT),
    exact("to_regnamespace", Metadata, FACT),
    exact(
        "current_setting",
        ReadSetting,
        "reads a setting; metadata only for the readable ones",
    ),
    exact("array_agg", Pure, PURE),
    exact("array_length", Pure, PURE),
    exact("array_lower", Pure, PURE),
    exact("array_upper", Pure, PURE),
    exact("cardinality", Pure, PURE),
    exact("generate_series", Pure, PURE),
    exact("generate_subscripts", Pure, PURE),
    exact("unnest", Pure, PURE),
    exact("count", Pure, PURE),
    exact("max", Pure, PURE),
    exact("min", Pure, PURE),
    exact("string_agg", Pure, PURE),
    exact("lower", Pure, PURE),
    exact("upper", Pure, PURE),
    // Settings.
    exact(
        "set_config",
        SetConfig,
        "changes a setting; only the harmless ones are allowed as control",
    ),
    // State other sessions see.
    exact(
        "nextval",
        WritesRelationArg,
        "advances a sequence (not undone by ROLLBACK)",
    ),
    exact(
        "setval",
        WritesRelationArg,
        "sets a sequence (not undone by ROLLBACK)",
    ),
    exact("pg_notify", Write, "sends a notification to other sessions"),
    // Large objects live outside any table the policy names.
    exact(
        "lo_get",
        ReadsLargeObjects,
        "reads large-object data (pg_largeobject)",
    ),
    exact(
        "loread",
        ReadsLargeObjects,
        "reads large-object data (pg_largeobject)",
    ),
    exact(
        "lo_open",
        ReadsLargeObjects,
        "opens a large object (pg_largeobject)",
    ),
    exact(
        "lo_create",
        WritesLargeObjects,
        "creates a large object (pg_largeobject)",
    ),
    exact(
        "lo_creat",
        WritesLargeObjects,
        "creates a large object (pg_largeobject)",
    ),
    exact(
        "lo_from_bytea",
        WritesLargeObjects,
        "creates a large object (pg_largeobject)",
    ),
    exact(
        "lo_put",
        WritesLargeObjects,
        "writes large-object data (pg_largeobject)",
    ),
    exact(
        "lowrite",
        WritesLargeObjects,
        "writes large-object data (pg_largeobject)",
    ),
    prefix(
        "lo_truncate",
        WritesLargeObjects,
        "truncates a large object (pg_largeobject)",
    ),
    exact(
        "lo_unlink",
        WritesLargeObjects,
        "deletes a large object (pg_largeobject)",
    ),
];

/// Settings a session may change as `control`: they affect only how this
/// session formats values, names itself, or bounds its own work. Anything
/// else — `role`, `session_authorization`, and above all the settings that
/// change how the proxy must read later messages (`client_encoding`,
/// `standard_conforming_strings`, `backslash_quote`, `escape_string_warning`)
/// — is `dangerous`. `search_path` is harmless because the session tracks it
/// to qualify relation names (and only through `SET`, never `set_config`).
pub(crate) const HARMLESS_SETTINGS: &[&str] = &[
    "application_name",
    "client_min_messages",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_deferrable",
    "jit",
    // `SET TRANSACTION …` and `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
    "transaction",
    "session characteristics",
    "transaction snapshot",
];

/// Settings a metadata query may read with `current_setting` besides the
/// harmless ones: read-only facts about the server and how it talks. Reading
/// them is harmless even where changing them is not.
pub(crate) const READABLE_SETTINGS: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "client_encoding",
    "standard_conforming_strings",
    "integer_datetimes",
    "max_identifier_length",
    "is_superuser",
];

/// The catalogs a `metadata` query may read: types, their namespaces,
/// ranges, enum labels, and the columns of composite types. Not the catalogs
/// that hold data or secrets (`pg_statistic`, `pg_authid`, `pg_proc`'s
/// source, `pg_attrdef`, `pg_largeobject`) nor the statistics views.
pub(crate) const METADATA_CATALOGS: &[&str] = &[
    "pg_type",
    "pg_namespace",
    "pg_range",
    "pg_multirange",
    "pg_enum",
    "pg_attribute",
    "pg_class",
];

/// Whether `current_setting(name)` is a metadata read.
pub(crate) fn readable_setting(name: &str) -> bool {
    harmless_setting(name)
        || READABLE_SETTINGS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
}

/// Whether the qualified relation `schema.name` is a metadata catalog.
pub(crate) fn metadata_catalog(qualified: &str) -> bool {
    qualified
        .strip_prefix("pg_catalog.")
        .is_some_and(|name| METADATA_CATALOGS.contains(&name))
}

/// Whether `SET name …` only changes harmless session behaviour.
pub(crate) fn harmless_setting(name: &str) -> bool {
    HARMLESS_SETTINGS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// The list entry for a called function, by the last part of its name.
pub(crate) fn lookup(name: &str) -> Option<&'static Entry> {
    let lower = name.to_ascii_lowercase();
    FUNCTIONS.iter().find(|e| match e.name {
        Name::Exact(n) => lower == n,
        Name::Prefix(p) => lower.starts_with(p),
    })
}

/// The class a listed function gives the statement that calls it, when the
/// call alone decides it (sequence and large-object functions also add a
/// relation; see [`Effect`]).
pub(crate) fn class_of(effect: Effect) -> StatementClass {
    match effect {
        Dangerous | SetConfig => StatementClass::Dangerous,
        Write | WritesRelationArg | WritesLargeObjects => StatementClass::Write,
        ReadsLargeObjects => StatementClass::Read,
        // They never raise a class; whether a query is metadata is decided
        // from all of its calls and relations together (classify.rs).
        Metadata | ReadSetting | Pure => StatementClass::Control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_covers_families() {
        assert_eq!(lookup("PG_READ_FILE").unwrap().effect, Dangerous);
        assert_eq!(lookup("pg_read_binary_file").unwrap().effect, Dangerous);
        assert_eq!(lookup("dblink_exec").unwrap().effect, Dangerous);
        assert_eq!(lookup("pg_ls_waldir").unwrap().effect, Dangerous);
        assert_eq!(lookup("nextval").unwrap().effect, WritesRelationArg);
        assert_eq!(lookup("count").unwrap().effect, Pure);
        assert_eq!(lookup("version").unwrap().effect, Metadata);
        assert_eq!(lookup("current_setting").unwrap().effect, ReadSetting);
        assert_eq!(lookup("pg_stat_get_activity").unwrap().effect, Dangerous);
        assert!(lookup("pg_get_viewdef").is_none());
        assert!(lookup("substr").is_none());
    }

    #[test]
    fn entries_do_not_overlap() {
        for (i, a) in FUNCTIONS.iter().enumerate() {
            for b in &FUNCTIONS[i + 1..] {
                let (na, nb) = (name_text(a), name_text(b));
                let b_covers_a = na.starts_with(nb) && matches!(b.name, Name::Prefix(_));
                let a_covers_b = nb.starts_with(na) && matches!(a.name, Name::Prefix(_));
                assert!(!(a_covers_b || b_covers_a), "{na} and {nb} overlap");
            }
        }
    }

    fn name_text(e: &Entry) -> &'static str {
        match e.name {
            Name::Exact(n) | Name::Prefix(n) => n,
        }
    }

    /// docs/statements.md is the reviewed list for people: it must name
    /// every entry (prefixes with a `*`) and every harmless setting.
    #[test]
    fn documentation_lists_every_entry() {
        let doc = include_str!("../../../docs/statements.md");
        for e in FUNCTIONS {
            let shown = match e.name {
                Name::Exact(n) => format!("`{n}`"),
                Name::Prefix(p) => format!("`{p}*`"),
            };
            assert!(
                doc.contains(&shown),
                "docs/statements.md does not list {shown}"
            );
        }
        let lower = doc.to_ascii_lowercase();
        for s in HARMLESS_SETTINGS
            .iter()
            .chain(READABLE_SETTINGS)
            .chain(METADATA_CATALOGS)
        {
            assert!(lower.contains(s), "docs/statements.md does not list {s}");
        }
    }

    #[test]
    fn decoding_settings_are_not_harmless() {
        for s in [
            "client_encoding",
            "standard_conforming_strings",
            "backslash_quote",
            "escape_string_warning",
            "role",
            "session_authorization",
            "work_mem",
            "row_security",
            "default_transaction_read_only",
        ] {
            assert!(!harmless_setting(s), "{s}");
        }
        assert!(readable_setting("jit") && readable_setting("server_version"));
        assert!(!readable_setting("data_directory") && !readable_setting("ssl_key_file"));
        assert!(metadata_catalog("pg_catalog.pg_type"));
        assert!(!metadata_catalog("public.pg_type") && !metadata_catalog("pg_catalog.pg_authid"));
        assert!(harmless_setting("TimeZone"));
        assert!(harmless_setting("search_path"));
    }
}
