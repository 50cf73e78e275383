//! Configuration of a VM (one instance of a module) and of the plugins (filters) it runs.

use std::time::Duration;

/// How a module is instantiated and limited. Shared by every plugin running on the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The VM id: the namespace of shared data and queues (`plugin_vm_id`).
    pub vm_id: String,
    /// Handed to `on_vm_start` (buffer type VM_CONFIGURATION).
    pub configuration: Vec<u8>,
    /// Environment variables the guest sees through WASI; empty unless configured.
    pub environment: Vec<(String, String)>,
    /// The most linear memory one instance may grow to.
    pub memory_limit: usize,
    /// The wall-clock budget of each callback, unless a plugin sets its own. `None`: no limit
    /// (only sensible in tests). Needs the engine's epoch ticker to be running.
    pub timeout: Option<Duration>,
    /// The budget of each start-up step (`_initialize`, `on_vm_start`, `on_configure`), where
    /// filters parse configuration and build tables.
    pub start_timeout: Option<Duration>,
    /// The budget of each callback a root context runs on its own (`on_tick`,
    /// `on_queue_ready`, the answer to a call it made), where no request waits but every
    /// request of the worker does.
    pub background_timeout: Option<Duration>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vm_id: String::new(),
            configuration: Vec::new(),
            environment: Vec::new(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            timeout: Some(DEFAULT_TIMEOUT),
            start_timeout: Some(DEFAULT_START_TIMEOUT),
            background_timeout: Some(DEFAULT_BACKGROUND_TIMEOUT),
        }
    }
}

/// The default cap on an instance's linear memory.
pub const DEFAULT_MEMORY_LIMIT: usize = 128 << 20;
/// The default budget of one callback.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// The default budget of one start-up step: room for filters that build large tables there
/// (a WAF parsing its rule set takes about a second), and still an end for one that loops.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// The default budget of one callback a root context runs on its own.
pub const DEFAULT_BACKGROUND_TIMEOUT: Duration = Duration::from_millis(20);

/// A request's budget across all its callbacks when none is configured: five callbacks'
/// worth of `timeout`, the callback budget.
pub fn default_request_budget(timeout: Duration) -> Duration {
    timeout * 5
}

/// One filter configuration: a root context on the VM.
#[derive(Clone, Debug, Default)]
pub struct PluginConfig {
    /// Shown in logs and errors, and as `plugin_name`.
    pub name: String,
    /// `plugin_root_id`: lets one module serve several root contexts.
    pub root_id: String,
    /// Handed to `on_configure` (buffer type PLUGIN_CONFIGURATION).
    pub configuration: Vec<u8>,
    /// Overrides the VM's callback budget for this plugin's contexts.
    pub timeout: Option<Duration>,
}

/// What a stream may spend: its callback budget (`None`: its plugin's), and its budget
/// across all its callbacks (its request's; `None`: no such budget).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamLimits {
    pub timeout: Option<Duration>,
    pub request_budget: Option<Duration>,
}
