//! The class of every statement node of PostgreSQL's grammar, by node name.
//!
//! The tree walk asks this table about every node whose name ends in `Stmt`,
//! wherever it appears (a DELETE inside a CTE, a GRANT inside CREATE SCHEMA, a
//! trigger inside a rule), so one table decides top-level and nested
//! statements alike. A node this table does not know — one a newer parser
//! adds — is `dangerous`: new statement kinds are refused until reviewed.
//! Statements whose class depends on their arguments (SET, COPY, EXPLAIN,
//! transaction control, DROP, PREPARE/EXECUTE…) are refined in `classify`;
//! the entries here are what they count as when nothing refines them.

use cardgate_crds::v1alpha1::StatementClass::{self, *};

/// The class of the statement node `name`; `None` for nodes that are not
/// statements (expressions, clauses, names).
pub(crate) fn class_of(name: &str) -> Option<StatementClass> {
    if !name.ends_with("Stmt") || name == "RawStmt" {
        return None;
    }
    Some(match name {
        // Reads. FETCH reads from a cursor whose query was decided at DECLARE;
        // LISTEN receives what other sessions send.
        "SelectStmt" | "DeclareCursorStmt" | "FetchStmt" | "ListenStmt" | "ReturnStmt" => Read,
        // Explain without ANALYZE runs nothing; `classify` walks its query
        // in plan-only mode, and with ANALYZE as what it executes.
        "ExplainStmt" => Read,

        // Writes: data changes, row locks, sequences, notifications.
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "TruncateStmt" => Write,
        "LockStmt" | "RefreshMatViewStmt" | "NotifyStmt" => Write,

        // Session and transaction control.
        "TransactionStmt" | "VariableShowStmt" | "DiscardStmt" | "DeallocateStmt" => Control,
        "ClosePortalStmt" | "UnlistenStmt" | "ConstraintsSetStmt" => Control,
        // PREPARE counts as its body, EXECUTE as the statement it runs; both
        // are resolved by `classify` and the session.
        "PrepareStmt" | "ExecuteStmt" => Control,

        // Ordinary schema changes and maintenance.
        "CreateStmt" | "CreateSchemaStmt" | "AlterTableStmt" | "AlterTableMoveAllStmt" => Ddl,
        "ReplicaIdentityStmt" | "AlterCollationStmt" | "AlterDomainStmt" => Ddl,
        "CreateSeqStmt" | "AlterSeqStmt" | "CreateDomainStmt" | "DropStmt" => Ddl,
        "CommentStmt" | "IndexStmt" | "CreateStatsStmt" | "AlterStatsStmt" => Ddl,
        "RenameStmt" | "AlterObjectDependsStmt" | "AlterObjectSchemaStmt" => Ddl,
        "CompositeTypeStmt" | "CreateEnumStmt" | "CreateRangeStmt" | "AlterEnumStmt" => Ddl,
        "ViewStmt" | "CreateTableAsStmt" | "AlterTsDictionaryStmt" => Ddl,
        "AlterTsConfigurationStmt" | "ClusterStmt" | "VacuumStmt" | "ReindexStmt" => Ddl,

        // Side effects outside the data, privileges, code, other servers.
        "GrantStmt" | "GrantRoleStmt" | "AlterDefaultPrivilegesStmt" => Dangerous,
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => Dangerous,
        "AlterOwnerStmt" | "ReassignOwnedStmt" | "DropOwnedStmt" | "SecLabelStmt" => Dangerous,
        "CreatePolicyStmt" | "AlterPolicyStmt" => Dangerous,
        "CreateFunctionStmt" | "AlterFunctionStmt" | "DoStmt" | "CallStmt" => Dangerous,
        "CreateTrigStmt" | "RuleStmt" | "CreateEventTrigStmt" | "AlterEventTrigStmt" => Dangerous,
        "CreatePLangStmt" | "CreateAmStmt" | "LoadStmt" => Dangerous,
        // These bind functions into operators, casts, types or conversions
        // that later run implicitly, out of sight of the function list.
        "DefineStmt" | "CreateCastStmt" | "CreateTransformStmt" | "CreateConversionStmt" => {
            Dangerous
        }
        "CreateOpClassStmt" | "CreateOpFamilyStmt" | "AlterOpFamilyStmt" => Dangerous,
        "AlterOperatorStmt" | "AlterTypeStmt" => Dangerous,
        "CreateExtensionStmt" | "AlterExtensionStmt" | "AlterExtensionContentsStmt" => Dangerous,
        "CreateFdwStmt" | "AlterFdwStmt" | "CreateForeignServerStmt" => Dangerous,
        "AlterForeignServerStmt" | "CreateForeignTableStmt" | "ImportForeignSchemaStmt" => {
            Dangerous
        }
        "CreateUserMappingStmt" | "AlterUserMappingStmt" | "DropUserMappingStmt" => Dangerous,
        "CreatePublicationStmt" | "AlterPublicationStmt" => Dangerous,
        "CreateSubscriptionStmt" | "AlterSubscriptionStmt" | "DropSubscriptionStmt" => Dangerous,
        "CreateTableSpaceStmt" | "DropTableSpaceStmt" | "AlterTableSpaceOptionsStmt" => Dangerous,
        "CreatedbStmt" | "AlterDatabaseStmt" | "AlterDatabaseRefreshCollStmt" => Dangerous,
        "AlterDatabaseSetStmt" | "DropdbStmt" | "AlterSystemStmt" | "CheckPointStmt" => Dangerous,
        // Refined by `classify` when harmless; nested (in ALTER ROLE … SET,
        // function options) they stay dangerous.
        "VariableSetStmt" => Dangerous,
        // Refined by `classify` (COPY with a query, FROM STDIN).
        "CopyStmt" => Dangerous,
        // Anything else, including statement nodes added by newer parsers.
        _ => Dangerous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_statements_have_no_class() {
        assert_eq!(class_of("RangeVar"), None);
        assert_eq!(class_of("FuncCall"), None);
        assert_eq!(class_of("RawStmt"), None);
    }

    #[test]
    fn unknown_statements_fail_closed() {
        assert_eq!(class_of("CreateQuantumStmt"), Some(Dangerous));
    }
}
