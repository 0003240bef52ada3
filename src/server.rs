//! Starting and stopping the HTTP server: builds the services over the database, binds every
//! configured address, serves until SIGINT/SIGTERM, then shuts down gracefully so RocksDB closes
//! cleanly.

use std::{net::SocketAddr, sync::Arc};

use actix_service::ServiceFactoryExt;
use actix_web::{App, dev::AppConfig, middleware::from_fn, web};

use crate::{api, config::Config, head_limit::HeadLimit, services::Services};

mod tls;

/// Everything that can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Opening the database or building a service failed.
    #[error("{0}")]
    Services(String),
    /// The federation listener's certificate or key is unusable.
    #[error("{0}")]
    Tls(String),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the server until it is told to stop.
pub async fn run(config: Config) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        server_name = %config.server_name,
        data = %config.database_path.display(),
        registration = ?config.registration,
        federation = if config.federation.enabled { "on" } else { "off" },
        sync_writes = config.sync_writes,
        "starting Hearth"
    );
    let services = Services::open(config.clone()).map_err(|e| StartError::Services(e.to_string()))?;
    let accounts = services.accounts.estimate_count().unwrap_or(0);
    crate::services::push::worker::spawn(&services);
    crate::services::federation::sender::spawn(&services);
    crate::services::federation::forward::spawn(&services);
    crate::services::federation::device_lists::spawn(&services);
    crate::services::appservice::transactions::spawn(&services);
    // The search index of rooms written before it existed is built in the background.
    let rebuilding = Arc::clone(&services);
    std::thread::Builder::new()
        .name("search-rebuild".into())
        .spawn(move || {
            if let Err(e) = crate::services::search::rebuild(&rebuilding.rooms) {
                tracing::error!(error = %e, "search index rebuild failed");
            }
        })
        .map_err(|e| StartError::Services(e.to_string()))?;
    let server = bind(Arc::clone(&services), &config)?;
    for addr in server.addrs() {
        tracing::info!("listening on http://{addr}");
    }
    if let Some(addr) = server.federation_addr {
        tracing::info!("listening for other servers on https://{addr}");
    }
    tracing::info!(
        accounts_approx = accounts,
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    if config.registration == crate::config::RegistrationMode::Open
        && !config.listen.iter().all(|a| a.ip().is_loopback())
    {
        tracing::warn!("registration is open to anyone who can reach this server (registration.mode = \"open\")");
    }
    let result = server.run.await;
    if let Err(e) = result {
        tracing::error!("server stopped with an error: {e}");
    }
    services.flush_for_shutdown();
    drop(services);
    tracing::info!("stopped");
    Ok(())
}

/// A bound but not yet awaited server.
pub struct Bound {
    run: actix_web::dev::Server,
    addrs: Vec<SocketAddr>,
    /// The federation TLS listener's address, when there is one.
    pub federation_addr: Option<SocketAddr>,
}

impl Bound {
    /// The addresses actually bound (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Binds the configured addresses and builds the actix server over `services`: HTTP/1.1 on
/// each connection, wrapped in [`HeadLimit`] so even an oversized request head gets a Matrix
/// error. With federation on and `[federation] listen` set, the same application is also served
/// over TLS there.
pub fn bind(services: Arc<Services>, config: &Config) -> Result<Bound, StartError> {
    let data = web::Data::from(services);
    let federation = config.federation.enabled;
    let app = move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(api::respond::cors_and_trace))
            .configure(|cfg| api::configure(cfg, federation))
            .default_service(web::to(api::respond::not_found))
    };
    let mut server = actix_server::Server::build()
        .workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .shutdown_timeout(10);
    let mut addrs = Vec::new();
    for addr in &config.listen {
        let (listener, local) = listen(addr)?;
        let app = app.clone();
        server = server
            .listen("hearth", listener, move || {
                let app = app();
                actix_service::fn_service(|io: actix_rt::net::TcpStream| async move {
                    let peer = io.peer_addr().ok();
                    Ok::<_, actix_http::error::DispatchError>((HeadLimit::new(io), peer))
                })
                .and_then(
                    actix_http::HttpService::build()
                        .local_addr(local)
                        .h1(actix_service::map_config(app, |_| AppConfig::default())),
                )
            })
            .map_err(|source| StartError::Bind { addr: *addr, source })?;
        addrs.push(local);
    }
    let mut federation_addr = None;
    if let Some(tls_listener) = config.federation.listen.as_ref().filter(|_| config.federation.enabled) {
        let cert =
            tls::ReloadableCert::open(&tls_listener.cert_file, &tls_listener.key_file).map_err(StartError::Tls)?;
        let acceptor = cert.acceptor().map_err(StartError::Tls)?;
        cert.reload_on_sighup();
        let (listener, local) = listen(&tls_listener.addr)?;
        server = server
            .listen("hearth-federation", listener, move || {
                let app = app();
                let acceptor = acceptor.clone();
                actix_service::fn_service(move |io: actix_rt::net::TcpStream| {
                    let acceptor = acceptor.clone();
                    async move {
                        let peer = io.peer_addr().ok();
                        let tls = tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(io))
                            .await
                            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
                            .and_then(|handshake| handshake)
                            .map_err(actix_http::error::DispatchError::Io)?;
                        Ok::<_, actix_http::error::DispatchError>((HeadLimit::new(tls), peer))
                    }
                })
                .and_then(
                    actix_http::HttpService::build()
                        .local_addr(local)
                        .secure()
                        .h1(actix_service::map_config(app, |_| AppConfig::default())),
                )
            })
            .map_err(|source| StartError::Bind {
                addr: tls_listener.addr,
                source,
            })?;
        federation_addr = Some(local);
    }
    Ok(Bound {
        run: server.run(),
        addrs,
        federation_addr,
    })
}

fn listen(addr: &SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { addr: *addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}
