//! The settings our PostgreSQL runs with (`ordersys.conf`), apart from starting and stopping it
//! (`postgres`): durability stays on whatever else is tuned.

use std::path::Path;

/// Settings we own, in `ordersys.conf` (included last from postgresql.conf so it wins). With
/// `tls` (certificate, key), clients may connect with TLS (`sslmode=verify-full`).
pub(super) fn settings_text(
    listen: &str,
    port: u16,
    socket_dir: Option<&Path>,
    tls: Option<(&Path, &Path)>,
) -> String {
    let quoted = |p: &Path| p.to_string_lossy().replace('\'', "''");
    let socket = socket_dir.map(quoted).unwrap_or_default();
    let tls = tls.map_or(String::new(), |(cert, key)| {
        format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            quoted(cert),
            quoted(key)
        )
    });
    let text = format!(
        "# Written by loadtest (crates/stack) at every start; edits are lost.\n\
         listen_addresses = '{listen}'\n\
         port = {port}\n\
         unix_socket_directories = '{socket}'\n\
         max_connections = 200\n\
         shared_buffers = 256MB\n\
         # durability is a requirement: never turn these off\n\
         fsync = on\n\
         synchronous_commit = on\n\
         full_page_writes = on\n\
         # crash recovery (e.g. after an immediate stop in a chaos run) syncs the data directory\n\
         # with one syncfs() per file system instead of one fsync() per file: seconds, not 20+ s\n\
         recovery_init_sync_method = syncfs\n\
         # the outbox tables churn (every row is inserted and deleted within milliseconds):\n\
         # visit each database every 10 s, not every minute, so their dead rows are vacuumed\n\
         # before scans of them slow down (measured in docs/performance.md)\n\
         autovacuum_naptime = 10s\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] '\n"
    );
    text + &tls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keep_durability_on() {
        let s = settings_text("127.0.0.1", 55432, Some(Path::new("/x/pg/socket")), None);
        assert!(s.contains("port = 55432\n"));
        assert!(s.contains("listen_addresses = '127.0.0.1'\n"));
        assert!(s.contains("unix_socket_directories = '/x/pg/socket'\n"));
        assert!(s.contains("fsync = on\n"));
        assert!(s.contains("synchronous_commit = on\n"));
        assert!(s.contains("max_connections = 200\n"));
        assert!(s.contains("shared_buffers = 256MB\n"));
        assert!(s.contains("autovacuum_naptime = 10s\n"));
        assert!(
            settings_text("127.0.0.1", 1, None, None).contains("unix_socket_directories = ''\n")
        );
        let tls = settings_text(
            "127.0.0.1",
            1,
            None,
            Some((Path::new("/r/server.pem"), Path::new("/r/server.key"))),
        );
        assert!(tls.contains(
            "ssl = on\nssl_cert_file = '/r/server.pem'\nssl_key_file = '/r/server.key'\n"
        ));
    }
}
