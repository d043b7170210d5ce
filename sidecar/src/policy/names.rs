//! Relation names as PostgreSQL resolves them: qualification with the
//! session's search_path, and names written inside string literals.

/// The server's default `search_path` (`"$user", public`).
pub(crate) const DEFAULT_SEARCH_PATH: [&str; 2] = ["$user", "public"];

/// The schema unqualified names are reported in when the session has not
/// changed its search_path.
pub(crate) const DEFAULT_SCHEMA: &str = "public";

/// The schema an unqualified name is reported in: the first entry of the
/// search_path that names an ordinary schema. `$user` is skipped (the
/// upstream user's schema rarely exists and the session cannot see it),
/// and so are `pg_catalog` and `pg_temp` (see [`qualify`]). With no usable
/// entry PostgreSQL only finds catalog (and temporary) relations.
pub(crate) fn effective_schema<S: AsRef<str>>(path: &[S]) -> &str {
    path.iter()
        .map(AsRef::as_ref)
        .find(|s| {
            !s.is_empty()
                && *s != "$user"
                && *s != "pg_catalog"
                && *s != "pg_temp"
                && !s.starts_with("pg_temp_")
        })
        .unwrap_or("pg_catalog")
}

/// `schema.name` as reported to rules and audit. An unqualified name that
/// starts with `pg_` is reported in `pg_catalog`: PostgreSQL searches the
/// catalog before any schema on the path, and every catalog relation has
/// that prefix.
pub(crate) fn qualify(schema: Option<&str>, name: &str, effective_schema: &str) -> String {
    let schema = match schema {
        Some(s) => s,
        None if name.starts_with("pg_") => "pg_catalog",
        None => effective_schema,
    };
    let mut s = String::with_capacity(schema.len() + 1 + name.len());
    s.push_str(schema);
    s.push('.');
    s.push_str(name);
    s
}

/// Parses a relation name written as text, the way `regclass` input does
/// (`'orders_id_seq'`, `'payments."Seq"'`): unquoted parts fold to lower
/// case, quoted parts keep theirs, a database prefix is ignored. `None` when
/// the text is not a name.
pub(crate) fn parse_qualified(text: &str) -> Option<(Option<String>, String)> {
    let mut parts: Vec<String> = Vec::with_capacity(2);
    let mut chars = text.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                if c == '"' {
                    return None;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    let name = parts.pop()?;
    match parts.len() {
        0 => Some((None, name)),
        1 | 2 => Some((parts.pop(), name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_schema_skips_user_catalog_and_temp() {
        assert_eq!(effective_schema(&DEFAULT_SEARCH_PATH), "public");
        assert_eq!(
            effective_schema(&["$user", "pg_catalog", "payments", "public"]),
            "payments"
        );
        assert_eq!(effective_schema(&["pg_temp", "Pay"]), "Pay");
        assert_eq!(effective_schema::<&str>(&[]), "pg_catalog");
    }

    #[test]
    fn qualify_uses_catalog_for_pg_names() {
        assert_eq!(qualify(None, "orders", "public"), "public.orders");
        assert_eq!(qualify(Some("pay"), "orders", "public"), "pay.orders");
        assert_eq!(qualify(None, "pg_class", "payments"), "pg_catalog.pg_class");
    }

    #[test]
    fn parses_names_like_regclass() {
        let p = |s| parse_qualified(s);
        assert_eq!(p("orders_id_seq"), Some((None, "orders_id_seq".into())));
        assert_eq!(p("Orders_Seq"), Some((None, "orders_seq".into())));
        assert_eq!(
            p(" payments . \"My\"\"Seq\" "),
            Some((Some("payments".into()), "My\"Seq".into()))
        );
        assert_eq!(p("db.pay.seq"), Some((Some("pay".into()), "seq".into())));
        assert_eq!(p(""), None);
        assert_eq!(p("a..b"), None);
        assert_eq!(p("a.b.c.d"), None);
        assert_eq!(p("\"open"), None);
        assert_eq!(p("a b"), None);
    }
}
