//! A real PgBouncer (Debian's `pgbouncer`) in front of the test PostgreSQL, started on a free
//! port for one test and stopped when dropped. `.ci/run` installs the package; a machine
//! without it fails the test with a message saying so (never a skipped test).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};

/// One PgBouncer process and its files.
#[derive(Debug)]
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

/// `host:port` of a `postgres://` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(5432)),
        None => (hostport.to_owned(), 5432),
    }
}

/// Rewrites a `postgres://user:pw@host:port/db` URL to go through PgBouncer.
pub fn via(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (auth, rest) = match rest.split_once('@') {
        Some((a, r)) => (format!("{a}@"), r),
        None => (String::new(), rest),
    };
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{scheme}://{auth}127.0.0.1:{port}{path}")
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` (`transaction` or `session`) for every database of the
    /// server at `upstream_url`, with `pool_size` server connections per database and user.
    pub fn start(upstream_url: &str, pool_mode: &str, pool_size: u32) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it): \
                     the PgBouncer tests need the real one"
                )
            });
        let (host, upstream_port) = host_port(upstream_url);
        let port = crate::pg::free_port().expect("a free port for PgBouncer");
        let dir = std::env::temp_dir().join(format!(
            "mes-test-pgbouncer-{}-{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ));
        std::fs::create_dir_all(&dir).expect("PgBouncer directory");
        // Trust towards the clients (the upstream test server trusts loopback as well); the
        // users still have to be listed.
        std::fs::write(
            dir.join("userlist.txt"),
            "\"postgres\" \"\"\n\"mes_hub\" \"\"\n\"mes_reporting\" \"\"\n",
        )
        .expect("userlist");
        let ini = format!(
            "[databases]\n* = host={host} port={upstream_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\n\
             pool_mode = {pool_mode}\nmax_client_conn = 4000\n\
             default_pool_size = {pool_size}\nreserve_pool_size = 5\nreserve_pool_timeout = 5\n\
             server_idle_timeout = 600\nserver_lifetime = 3600\nserver_connect_timeout = 15\n\
             query_timeout = 120\nadmin_users = postgres\nstats_users = postgres\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\nlog_disconnections = 0\nlog_pooler_errors = 1\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
        let mut cmd = Command::new(&bin);
        if crate::pg::is_root() {
            // PgBouncer refuses to run as root.
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let b = PgBouncer { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PgBouncer did not listen on {port}: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// `url` (any user, any database on the upstream server) through this PgBouncer.
    pub fn url(&self, url: &str) -> String {
        via(url, self.port)
    }

    /// The admin console (it can be handed to a task that polls it).
    pub fn console(&self) -> Console {
        Console { port: self.port }
    }
}

/// PgBouncer's admin console (database `pgbouncer`), by port.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    port: u16,
}

impl Console {
    /// The rows of one `SHOW` command. The console speaks only the simple protocol: no
    /// parameters, no statement cache.
    pub async fn show(&self, what: &str) -> Vec<sqlx::postgres::PgRow> {
        let opts: sqlx::postgres::PgConnectOptions =
            format!("postgres://postgres@127.0.0.1:{}/pgbouncer", self.port)
                .parse()
                .expect("PgBouncer admin URL");
        let mut c = PgConnection::connect_with(&opts.statement_cache_capacity(0))
            .await
            .expect("connecting to the PgBouncer console");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SHOW {what}")))
            .fetch_all(&mut c)
            .await
            .expect("SHOW on the console")
    }

    /// Client connections, not counting the console's own.
    pub async fn clients(&self) -> u64 {
        (self.show("CLIENTS").await.len() as u64).saturating_sub(1)
    }

    /// Server connections to PostgreSQL.
    pub async fn servers(&self) -> u64 {
        self.show("SERVERS").await.len() as u64
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
