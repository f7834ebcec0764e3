//! The timer service: one task that sleeps until the next tick of any trigger
//! (or until triggers change), then fires what is due. Each pass takes the
//! due ticks durably (one flush for all of them) before calling any target;
//! each call runs on its own task and records its outcome when it ends.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use super::{
    decode, encode, encode_tick, firing_key, firings_prefix, Fire, Firing, Outcome, Timers,
    HISTORY_PER_TRIGGER,
};
use pool_manager::Result;

impl Timers {
    /// Starts the service on the current tokio runtime.
    pub fn start(self: &Arc<Self>, fire: Arc<dyn Fire>) -> tokio::task::JoinHandle<()> {
        let timers = self.clone();
        let task = tokio::spawn(async move { timers.run(fire).await });
        let previous = self
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = previous {
            old.abort();
        }
        task
    }

    /// Stops the service (a server that is stopping): after any pass under
    /// way, so that no tick is taken without its call being made; ticks that
    /// fall due from now on fire at the next start.
    pub async fn stop(&self) {
        let _turn = self.turn.lock().await;
        if let Some(task) = self
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }

    async fn run(self: Arc<Self>, fire: Arc<dyn Fire>) {
        loop {
            // Registered before the pass reads the triggers: a change made
            // during the pass still wakes the next sleep.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.clock.now();
            let wake = match self.pass(now, &fire).await {
                Ok(wake) => wake,
                Err(e) => {
                    tracing::error!("time triggers: {e}; trying again in a second");
                    Some(now + jiff::SignedDuration::from_secs(1))
                }
            };
            self.passes.send_replace(Some(now));
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(at) => {}
                        _ = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Fires every trigger due at `now`; answers when the next tick is.
    async fn pass(
        self: &Arc<Self>,
        now: Timestamp,
        fire: &Arc<dyn Fire>,
    ) -> Result<Option<Timestamp>> {
        let turn = self.turn.lock().await;
        let table = self.table();
        let mut due = Vec::new();
        let mut wake: Option<Timestamp> = None;
        for (key, entry) in table.iter() {
            let taken = match self.taken_tick(key) {
                Some(t) => t,
                None => {
                    self.taken.insert(key.as_bytes(), &encode_tick(now))?;
                    now
                }
            };
            let after = match entry.schedule.due(taken, now) {
                Some(tick) => {
                    due.push((entry.trigger.clone(), tick));
                    tick
                }
                None => taken,
            };
            if let Some(next) = entry.schedule.next_after(after.max(now)) {
                wake = Some(wake.map_or(next, |w| w.min(next)));
            }
        }
        if due.is_empty() {
            return Ok(wake);
        }
        // Taken before any call: a crash from here on never fires these ticks
        // again. A tick's `taken` and its firing go into a backup together.
        let whole = pool_manager::store::whole_write().await;
        for (t, tick) in &due {
            let key = t.key();
            self.taken.insert(key.as_bytes(), &encode_tick(*tick))?;
            let firing = Firing {
                tick: *tick,
                started_at: now,
                outcome: Outcome::Running,
                status: None,
                duration_ms: None,
                error: None,
                run_id: None,
            };
            self.firings
                .insert(firing_key(&key, *tick), encode(&firing)?)?;
            self.prune(&key)?;
        }
        drop(whole);
        self.db.flush_async().await?;
        drop(turn);
        for (trigger, tick) in due {
            let timers = self.clone();
            let fire = fire.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let called = fire.fire(&trigger, tick).await;
                let ms = started.elapsed().as_millis() as u64;
                if let Err(e) = timers.finish(&trigger.key(), tick, called, ms).await {
                    tracing::warn!(trigger = %trigger.key(), "cannot record a firing: {e}");
                }
            });
        }
        Ok(wake)
    }

    /// Records how a firing ended (unless its trigger was deleted meanwhile).
    async fn finish(
        &self,
        key: &str,
        tick: Timestamp,
        called: super::Called,
        ms: u64,
    ) -> Result<()> {
        let k = firing_key(key, tick);
        let Some(old) = self.firings.get(&k)? else {
            return Ok(());
        };
        let mut f: Firing = decode(&old)?;
        f.outcome = if called.ok {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        self.firings_total
            .get_or_create(&crate::metrics::FiringLabels {
                trigger: key.to_string(),
                outcome: if called.ok { "succeeded" } else { "failed" },
            })
            .inc();
        f.status = called.status;
        f.error = called.error;
        f.run_id = called.run_id;
        f.duration_ms = Some(ms);
        // Only over the record it read: a deleted trigger's firing stays deleted.
        let _ = self
            .firings
            .compare_and_swap(&k, Some(old), Some(encode(&f)?))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Keeps the newest `HISTORY_PER_TRIGGER` firings of `key`.
    fn prune(&self, key: &str) -> Result<()> {
        let keys: Vec<sled::IVec> = self
            .firings
            .scan_prefix(firings_prefix(key))
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        if keys.len() > HISTORY_PER_TRIGGER {
            for k in &keys[..keys.len() - HISTORY_PER_TRIGGER] {
                self.firings.remove(k)?;
            }
        }
        Ok(())
    }

    /// Waits until the service has made a pass with its clock at `t` or later
    /// (tests, with a manual clock).
    pub async fn passed(&self, t: Timestamp) {
        let mut rx = self.passes.subscribe();
        let _ = rx.wait_for(|p| p.is_some_and(|p| p >= t)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::SignedDuration;
    use tokio::sync::mpsc;

    use super::super::{Called, ManualClock, TimeTrigger};
    use super::*;

    /// Records each call, and answers 200.
    struct Recorder(mpsc::UnboundedSender<(String, Timestamp)>);

    impl Fire for Recorder {
        fn fire<'a>(
            &'a self,
            t: &'a TimeTrigger,
            tick: Timestamp,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Called> + Send + 'a>> {
            let _ = self.0.send((t.name.clone(), tick));
            Box::pin(async {
                Called {
                    ok: true,
                    status: Some(200),
                    ..Called::default()
                }
            })
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn trigger(name: &str, cron: &str) -> TimeTrigger {
        serde_json::from_value(serde_json::json!({"name": name, "cron": cron, "function": "f"}))
            .unwrap()
    }

    struct World {
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
    }

    /// A server's timer service on the data in `w`: its calls come out of the receiver.
    struct Service {
        timers: Arc<Timers>,
        task: tokio::task::JoinHandle<()>,
        calls: mpsc::UnboundedReceiver<(String, Timestamp)>,
        _db: sled::Db,
    }

    impl World {
        fn new(start: &str) -> World {
            World {
                dir: tempfile::tempdir().unwrap(),
                clock: Arc::new(ManualClock::new(ts(start))),
            }
        }

        /// Opens the store and starts the service, as a server start does.
        fn start(&self) -> Service {
            let db = pool_manager::store::open_waiting(
                &sled::Config::new().path(self.dir.path()),
                std::time::Duration::from_secs(10),
            )
            .unwrap();
            let timers = Timers::open(&db, self.clock.clone()).unwrap();
            let (tx, calls) = mpsc::unbounded_channel();
            let task = timers.start(Arc::new(Recorder(tx)));
            Service {
                timers,
                task,
                calls,
                _db: db,
            }
        }
    }

    impl Service {
        /// Stops it as a crash would: the task is gone, the store is what was flushed.
        async fn crash(self) {
            self.task.abort();
            let _ = self.task.await;
            // The calls in flight end (the recorder answers at once) and let go
            // of the store, so that the next start can open it.
            let timers = self.timers;
            while Arc::strong_count(&timers) > 1 {
                tokio::task::yield_now().await;
            }
        }

        /// The calls made by the pass at clock time `t`.
        async fn calls_by(&mut self, t: Timestamp) -> Vec<(String, Timestamp)> {
            tokio::time::timeout(Duration::from_secs(10), self.timers.passed(t))
                .await
                .expect("the service made a pass");
            let mut got = Vec::new();
            while let Ok(c) = self.calls.try_recv() {
                got.push(c);
            }
            got
        }

        /// Waits until the firing of `tick` has its outcome recorded.
        async fn settled(&self, key: &str, tick: Timestamp) -> Firing {
            let k = firing_key(key, tick);
            let mut sub = self.timers.firings.watch_prefix(k.clone());
            loop {
                if let Some(v) = self.timers.firings.get(&k).unwrap() {
                    let f: Firing = decode(&v).unwrap();
                    if f.outcome != Outcome::Running {
                        return f;
                    }
                }
                tokio::time::timeout(Duration::from_secs(10), &mut sub)
                    .await
                    .expect("the firing settles");
            }
        }
    }

    #[tokio::test]
    async fn ticks_fire_in_order_and_each_is_recorded_with_its_outcome() {
        let w = World::new("2026-03-10T10:00:00.500Z");
        let mut s = w.start();
        s.timers.store_new(trigger("t", "@every 1s")).await.unwrap();
        let now = w.clock.get();
        assert!(
            s.calls_by(now).await.is_empty(),
            "nothing before the first tick"
        );
        for (at, tick) in [
            ("2026-03-10T10:00:01Z", "2026-03-10T10:00:01Z"),
            ("2026-03-10T10:00:02.2Z", "2026-03-10T10:00:02Z"),
        ] {
            w.clock.set(ts(at));
            assert_eq!(s.calls_by(ts(at)).await, vec![("t".to_string(), ts(tick))]);
            let f = s.settled("t", ts(tick)).await;
            assert_eq!((f.outcome, f.status), (Outcome::Succeeded, Some(200)));
        }
        let history = s.timers.history("t", 10).unwrap();
        let ticks: Vec<Timestamp> = history.iter().map(|f| f.tick).collect();
        assert_eq!(
            ticks,
            vec![ts("2026-03-10T10:00:02Z"), ts("2026-03-10T10:00:01Z")]
        );
        s.crash().await;
    }

    #[tokio::test]
    async fn ticks_missed_while_down_fire_once_and_a_restart_never_fires_a_tick_twice() {
        let w = World::new("2026-03-10T10:00:30Z");
        let mut s = w.start();
        s.timers
            .store_new(trigger("five", "*/5 * * * *"))
            .await
            .unwrap();
        w.clock.set(ts("2026-03-10T10:05:00Z"));
        assert_eq!(s.calls_by(ts("2026-03-10T10:05:00Z")).await.len(), 1);
        s.settled("five", ts("2026-03-10T10:05:00Z")).await;
        s.crash().await;

        // Down for an hour and a half: 18 ticks fell due; one firing, for the latest.
        w.clock.set(ts("2026-03-10T11:33:00Z"));
        let mut s = w.start();
        let calls = s.calls_by(ts("2026-03-10T11:33:00Z")).await;
        assert_eq!(
            calls,
            vec![("five".to_string(), ts("2026-03-10T11:30:00Z"))]
        );
        // Killed as soon as the tick was taken (before, or while, calling).
        s.crash().await;

        // Started again before the next tick: the 11:30 tick is not fired again.
        let mut s = w.start();
        assert!(s.calls_by(ts("2026-03-10T11:33:00Z")).await.is_empty());
        let history = s.timers.history("five", 10).unwrap();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0].tick, ts("2026-03-10T11:30:00Z"));
        assert!(
            matches!(
                history[0].outcome,
                Outcome::Interrupted | Outcome::Succeeded
            ),
            "{history:?}"
        );
        // And the next tick fires as usual.
        w.clock.set(ts("2026-03-10T11:35:00Z"));
        assert_eq!(
            s.calls_by(ts("2026-03-10T11:35:00Z")).await,
            vec![("five".to_string(), ts("2026-03-10T11:35:00Z"))]
        );
        s.crash().await;
    }

    /// A stopped service (a server shutting down) takes no tick: one that falls
    /// due while it stops fires at the next start, not never.
    #[tokio::test]
    async fn a_tick_due_after_a_stop_fires_at_the_next_start() {
        let w = World::new("2026-03-10T10:00:30Z");
        let mut s = w.start();
        s.timers
            .store_new(trigger("five", "*/5 * * * *"))
            .await
            .unwrap();
        assert!(s.calls_by(ts("2026-03-10T10:00:30Z")).await.is_empty());
        s.timers.stop().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), &mut s.task).await;
        assert!(
            ended.is_ok_and(|r| r.is_err_and(|e| e.is_cancelled())),
            "the service has ended"
        );
        w.clock.set(ts("2026-03-10T10:05:00Z"));
        assert_eq!(s.timers.history("five", 10).unwrap().len(), 0);
        let Service {
            timers,
            calls,
            task,
            _db: db,
        } = s;
        drop((calls, task));
        while Arc::strong_count(&timers) > 1 {
            tokio::task::yield_now().await;
        }
        drop((timers, db));
        let mut s = w.start();
        assert_eq!(
            s.calls_by(ts("2026-03-10T10:05:00Z")).await,
            vec![("five".to_string(), ts("2026-03-10T10:05:00Z"))]
        );
        s.crash().await;
    }

    #[tokio::test]
    async fn a_firing_in_flight_at_a_crash_is_marked_interrupted_not_repeated() {
        let w = World::new("2026-03-10T10:00:00Z");
        // Taken and recorded as running, then the server died before the answer.
        {
            let db = pool_manager::store::open_waiting(
                &sled::Config::new().path(w.dir.path()),
                std::time::Duration::from_secs(10),
            )
            .unwrap();
            let timers = Timers::open(&db, w.clock.clone()).unwrap();
            timers.store_new(trigger("t", "@hourly")).await.unwrap();
            let firing = Firing {
                tick: ts("2026-03-10T10:00:00Z"),
                started_at: ts("2026-03-10T10:00:00Z"),
                outcome: Outcome::Running,
                status: None,
                duration_ms: None,
                error: None,
                run_id: None,
            };
            timers
                .firings
                .insert(firing_key("t", firing.tick), encode(&firing).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        w.clock.set(ts("2026-03-10T10:30:00Z"));
        let mut s = w.start();
        assert!(s.calls_by(ts("2026-03-10T10:30:00Z")).await.is_empty());
        let h = s.timers.history("t", 10).unwrap();
        assert_eq!(h[0].outcome, Outcome::Interrupted);
        assert!(h[0].error.as_deref().unwrap().contains("server stopped"));
        s.crash().await;
    }

    #[tokio::test]
    async fn the_history_keeps_the_newest_firings_and_a_deleted_trigger_leaves_none() {
        let w = World::new("2026-03-10T10:00:00.5Z");
        let mut s = w.start();
        s.timers.store_new(trigger("t", "@every 1s")).await.unwrap();
        let mut last = w.clock.get();
        for _ in 0..HISTORY_PER_TRIGGER + 5 {
            w.clock.advance(SignedDuration::from_secs(1));
            last = w.clock.get();
            assert_eq!(s.calls_by(last).await.len(), 1);
        }
        let every = super::super::Schedule::parse("@every 1s", None).unwrap();
        let latest = every.latest_at_or_before(last).unwrap();
        s.settled("t", latest).await;
        let h = s.timers.history("t", 1000).unwrap();
        assert_eq!(h.len(), HISTORY_PER_TRIGGER);
        assert_eq!(h[0].tick, latest);
        s.timers.delete("t").await.unwrap();
        assert_eq!(s.timers.firings.scan_prefix(firings_prefix("t")).count(), 0);
        assert!(s.timers.taken.get("t").unwrap().is_none());
        s.crash().await;
    }

    #[tokio::test]
    async fn triggers_changed_while_the_service_sleeps_are_picked_up() {
        let w = World::new("2026-03-10T10:00:00.5Z");
        let mut s = w.start();
        // The service sleeps with nothing to do; a new trigger wakes it.
        assert!(s.calls_by(w.clock.get()).await.is_empty());
        s.timers
            .store_new(trigger("late", "@every 2s"))
            .await
            .unwrap();
        w.clock.set(ts("2026-03-10T10:00:02Z"));
        assert_eq!(
            s.calls_by(ts("2026-03-10T10:00:02Z")).await,
            vec![("late".to_string(), ts("2026-03-10T10:00:02Z"))]
        );
        s.crash().await;
    }

    #[tokio::test]
    async fn creating_a_name_that_is_taken_changes_nothing() {
        let w = World::new("2026-03-10T10:00:00Z");
        let s = w.start();
        s.timers.store_new(trigger("t", "@hourly")).await.unwrap();
        s.crash().await;
        // While the service is down (the 11:00 tick falls due), a second
        // creation of the name is refused and leaves the trigger as it was.
        w.clock.set(ts("2026-03-10T11:30:00Z"));
        {
            let db = pool_manager::store::open_waiting(
                &sled::Config::new().path(w.dir.path()),
                std::time::Duration::from_secs(10),
            )
            .unwrap();
            let timers = Timers::open(&db, w.clock.clone()).unwrap();
            let err = timers.store_new(trigger("t", "@daily")).await.unwrap_err();
            assert_eq!(err.code(), "already_exists");
            assert_eq!(timers.get("t").unwrap().cron, "@hourly");
        }
        let mut s = w.start();
        assert_eq!(
            s.calls_by(ts("2026-03-10T11:30:00Z")).await,
            vec![("t".to_string(), ts("2026-03-10T11:00:00Z"))]
        );
        s.crash().await;
    }

    #[tokio::test]
    async fn a_changed_schedule_starts_from_the_change() {
        let w = World::new("2026-03-10T10:00:00Z");
        let mut s = w.start();
        s.timers.store_new(trigger("t", "@hourly")).await.unwrap();
        // 10:30: a new schedule whose last tick (10:25) is before the change: not fired.
        w.clock.set(ts("2026-03-10T10:30:00Z"));
        assert!(s.calls_by(ts("2026-03-10T10:30:00Z")).await.is_empty());
        s.timers
            .store_update(trigger("t", "*/5 * * * *"))
            .await
            .unwrap();
        w.clock.set(ts("2026-03-10T10:34:00Z"));
        assert!(s.calls_by(ts("2026-03-10T10:34:00Z")).await.is_empty());
        w.clock.set(ts("2026-03-10T10:35:00Z"));
        assert_eq!(s.calls_by(ts("2026-03-10T10:35:00Z")).await.len(), 1);
        s.crash().await;
    }
}
