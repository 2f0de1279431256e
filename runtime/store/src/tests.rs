//! Unit tests of the connection-string handling.

use super::{redact_url, url_has_password, Store, StoreConfig};

#[test]
fn redacted_urls_never_show_the_password() {
    let cases = [
        ("postgresql://app:s3cr%2Fet@db.example:5433/app", "postgresql://app@db.example:5433/app"),
        ("postgresql://app:pa%3Fss@db/app?application_name=x", "postgresql://app@db:5432/app"),
        ("postgresql://app@db/app?password=hunter2", "postgresql://app@db:5432/app"),
        ("host=db port=5433 user=app password='se cret' dbname=app", "postgresql://app@db:5433/app"),
        ("host=db user=app password=hunter2", "postgresql://app@db/"),
    ];
    for (url, shown) in cases {
        assert_eq!(redact_url(url), shown, "{url}");
        assert!(url_has_password(url), "{url}");
    }
    // Unparseable strings (a raw `/` or `?` in the password) are not shown at all.
    for url in ["postgresql://app:SE/CRET@db/app", "postgresql://app:SE?CRET@db/app", "host='SECRET password=SECRET"] {
        let shown = redact_url(url);
        assert!(!shown.contains("SE") && !shown.contains("CRET"), "{url} -> {shown}");
    }
    assert!(!url_has_password("postgresql://app@db/app"));
}

#[test]
fn tls_settings_are_refused_clearly() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = Store::new(&StoreConfig::new(format!("postgresql://app@db/app?sslmode={mode}"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("sslmode={mode}")) && text.contains("TLS"), "{text}");
    }
    assert!(Store::new(&StoreConfig::new("postgresql://app@db/app?sslmode=prefer")).is_ok());
    assert!(Store::new(&StoreConfig::new("postgresql://app@db/app?sslmode=disable")).is_ok());
}
