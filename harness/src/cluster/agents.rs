//! The hosts' agents: started as real `twilld` processes, signalled,
//! stopped, and their logs read back for failure reports.

use super::*;

impl Cluster {
    /// Starts `twilld` on `host`; its stdout/stderr go to the host's log.
    pub fn start_agent(&mut self, host: &str) -> Result<()> {
        self.start_agent_with(host, &[])
    }

    /// Starts `host`'s agent with `extra` flags after the cluster's own.
    pub fn start_agent_with(&mut self, host: &str, extra: &[&str]) -> Result<()> {
        if self.agents.contains_key(host) {
            return Err(HarnessError::Exists {
                kind: "agent on host",
                name: host.to_owned(),
            });
        }
        let bin = self.binary("twilld")?;
        let h = self.host(host)?;
        let mut args = vec![
            "--etcd-endpoints".to_owned(),
            self.etcd_endpoints(),
            "--etcd-prefix".to_owned(),
            self.etcd_prefix.clone(),
            "--resync-interval".to_owned(),
            self.resync_interval.to_string(),
            "--log-level".to_owned(),
            "info,twill=debug,subnet_allocator=debug".to_owned(),
        ];
        if let Some(ttl) = self.lease_ttl {
            args.extend(["--lease-ttl".to_owned(), ttl.to_string()]);
        }
        args.extend(self.agent_args.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        // Each node has its own name, as the manifest gives it, unless the
        // test names it.
        if !args.iter().any(|a| a == "--node-name") {
            args.extend(["--node-name".to_owned(), host.to_owned()]);
        }
        let mut c = h.agent_command(&bin, args)?;
        if self.own_process_group {
            c.process_group(0);
        }
        let agent = h.ns.spawn(&mut c)?;
        self.agents.insert(host.to_owned(), agent);
        Ok(())
    }

    /// The PID of `host`'s running agent (`ip netns exec` execs it in
    /// place), for reading its CPU time and namespace from /proc.
    pub fn agent_pid(&self, host: &str) -> Option<i32> {
        self.agents.get(host).map(|a| a.pid())
    }

    /// Starts the agents of all hosts that have none running.
    pub fn start_agents(&mut self) -> Result<()> {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for n in names {
            if !self.agents.contains_key(&n) {
                self.start_agent(&n)?;
            }
        }
        Ok(())
    }

    /// Takes `host`'s running agent out of the cluster's books and sends it
    /// `signal`; the caller reaps it.
    fn signal_agent(&mut self, host: &str, signal: Signal) -> Result<ChildGuard> {
        let agent = self
            .agents
            .remove(host)
            .ok_or_else(|| HarnessError::Unknown {
                kind: "running agent on host",
                name: host.to_owned(),
            })?;
        let pid = agent.pid();
        kill(Pid::from_raw(pid), signal).map_err(|source| HarnessError::Signal {
            pid,
            signal: signal.as_str().into(),
            source,
        })?;
        Ok(agent)
    }

    /// Sends SIGTERM to `host`'s agent and waits (10 s) for it to exit;
    /// SIGKILLs it and reports a timeout when it does not.
    pub fn stop_agent(&mut self, host: &str) -> Result<ExitStatus> {
        let mut agent = self.signal_agent(host, Signal::SIGTERM)?;
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        loop {
            match agent.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let tail = self.agent_log_tail(host);
                    drop(agent);
                    return Err(HarnessError::Timeout {
                        what: format!("agent on {host} to exit after SIGTERM"),
                        waited: timeout,
                        last: "still running, killed".into(),
                        detail: format!("\n{tail}"),
                    });
                }
            }
        }
    }

    /// SIGKILLs `host`'s agent (it gets no chance to clean anything up) and
    /// reaps it.
    pub fn kill_agent(&mut self, host: &str) -> Result<()> {
        let agent = self.signal_agent(host, Signal::SIGKILL)?;
        // Dropping the guard reaps it.
        drop(agent);
        Ok(())
    }

    /// The whole agent log of `host` (all runs, appended).
    pub fn agent_log(&self, host: &str) -> Result<String> {
        let path = self.host(host)?.agent_log_path();
        std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|source| HarnessError::Io { path, source })
    }

    /// Whether `host`'s agent process is still running (false when it
    /// exited or was never started).
    pub fn agent_running(&mut self, host: &str) -> bool {
        self.agents.get_mut(host).is_some_and(ChildGuard::running)
    }

    /// The last lines of `host`'s agent log, labelled.
    pub fn agent_log_tail(&self, host: &str) -> String {
        match self.host(host) {
            Ok(h) => format!(
                "--- twilld log of {host} ({}) ---\n{}",
                h.agent_log_path().display(),
                cmd::tail(&h.agent_log_path(), LOG_TAIL_LINES)
            ),
            Err(e) => e.to_string(),
        }
    }

    /// Log tails of every host's agent, for failure reports.
    pub fn diagnostics(&self) -> String {
        self.hosts
            .iter()
            .filter(|h| h.agent_log_path().exists())
            .map(|h| self.agent_log_tail(&h.name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
