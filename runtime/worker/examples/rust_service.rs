//! A Rust service that uses celeriac as a library: typed handlers, enqueueing from Rust, and a
//! worker running in-process until Ctrl-C, storing results in Celery's `celery_taskmeta` on the
//! same database (`db+postgresql://`), where any Celery client reads them.
//!
//! ```sh
//! cargo run -p celeriac --example rust_service -- postgresql://postgres@127.0.0.1:5432/app
//! ```
//!
//! The same tasks can be sent by any Celery producer, and their results read with `AsyncResult`:
//!
//! ```python
//! from celery import Celery
//! app = Celery(broker="celeriac+postgresql://postgres@127.0.0.1:5432/app",
//!              backend="db+postgresql+psycopg://postgres@127.0.0.1:5432/app")
//! app.send_task("shop.total", ([3, 4],), {"discount": 0.5}).get(timeout=10)  # 3.5
//! app.AsyncResult("<the id this program prints>").get()                      # 3.5
//! ```

use celeriac::{
    protocol::{Map, TaskOptions, Value},
    store::Store,
    Client, Registry, ResultsConfig, TaskError, Worker, WorkerConfig,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Keyword arguments of `shop.total`, all optional as in a Python signature with defaults.
#[derive(Debug, Deserialize)]
struct TotalOptions {
    #[serde(default)]
    discount: f64,
}

fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    registry.register_with_kwargs("shop.total", |(prices,): (Vec<f64>,), opts: TotalOptions| async move {
        if !(0.0..=1.0).contains(&opts.discount) {
            return Err(TaskError::exception("ValueError", format!("bad discount {}", opts.discount)));
        }
        Ok(prices.iter().sum::<f64>() * (1.0 - opts.discount))
    });
    registry
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).ok_or("usage: rust_service DATABASE_URL")?;
    let store = Store::connect(&url)?;
    store.migrate().await?;

    let mut kwargs = Map::new();
    kwargs.insert("discount".into(), Value::Float(0.5));
    let prices = Value::List(vec![Value::Float(3.0), Value::Float(4.0)]);
    let id = Client::new(store.clone()).send_task("shop.total", &[prices], &kwargs, &TaskOptions::default()).await?;
    println!("sent shop.total[{id}]");

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    // Results where Celery's database backend keeps them (pickle in `result`, which Celery 5.6
    // and 5.7 clients both read).
    let config = WorkerConfig { results: Some(ResultsConfig::new(format!("db+{url}"))), ..WorkerConfig::default() };
    let report = Worker::new(store, registry(), config)?.run(shutdown).await?;
    println!("{report:?}");
    Ok(())
}
