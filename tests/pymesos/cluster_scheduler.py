"""A pymesos 0.3.15 scheduler against a real cairn-master and a real cairn-agent
(tests/tests/cluster.rs). argv: master host:port, busybox image reference.

On the first offer it launches, in one ACCEPT:
  c-echo  `echo hi`            (host filesystem)  -> TASK_FINISHED
  c-exit  `exit 3`             (host filesystem)  -> TASK_FAILED
  c-sleep `sleep 60`           (host filesystem)  -> TASK_RUNNING, killed -> TASK_KILLED
  c-image busybox `echo ...`   (the image)        -> TASK_FINISHED
  c-long  `sleep 600`          (host filesystem)  -> TASK_RUNNING, reconciled while running;
          then prints "waiting" and reads a line from stdin (the test checks Prometheus
          meanwhile), then kills it -> TASK_KILLED.
Once everything ended it reconciles c-echo (acknowledged terminal tasks are forgotten, so
TASK_LOST as in Mesos). pymesos acknowledges every update. One line per milestone; exit 0
when all were seen.
"""
import sys
import threading

from pymesos import MesosSchedulerDriver, Scheduler

master, image = sys.argv[1], sys.argv[2]
lock = threading.Lock()
long_running = threading.Event()
done = threading.Event()
terminal = {}
EXPECTED = {
    "c-echo": "TASK_FINISHED",
    "c-exit": "TASK_FAILED",
    "c-sleep": "TASK_KILLED",
    "c-image": "TASK_FINISHED",
    "c-long": "TASK_KILLED",
}
TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR",
            "TASK_DROPPED", "TASK_GONE"}


def say(*parts):
    line = " ".join(str(p) for p in parts)
    with lock:
        print(line, flush=True)


def task(offer, name, command, image_ref=None):
    t = {
        "task_id": {"value": name},
        "agent_id": offer["agent_id"],
        "name": name,
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
        ],
        "command": {"value": command},
        "kill_policy": {"grace_period": {"nanoseconds": 200000000}},
    }
    if image_ref:
        t["container"] = {
            "type": "MESOS",
            "mesos": {"image": {"type": "DOCKER", "docker": {"name": image_ref}}},
        }
    return t


class Cluster(Scheduler):
    def __init__(self):
        self.launched = False

    def registered(self, driver, framework_id, master_info):
        say("registered", framework_id["value"])

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                driver.declineOffer(offer["id"], {"refuse_seconds": 60})
                continue
            self.launched = True
            scalars = {r["name"]: r.get("scalar", {}).get("value") for r in offer["resources"]}
            say("offer", offer["agent_id"]["value"], "cpus", scalars.get("cpus"),
                "mem", scalars.get("mem"))
            tasks = [
                task(offer, "c-echo", "echo hi"),
                task(offer, "c-exit", "exit 3"),
                task(offer, "c-sleep", "sleep 60"),
                task(offer, "c-image", "echo hello from busybox; test -x /bin/busybox", image),
                task(offer, "c-long", "sleep 600"),
            ]
            for t in tasks:
                say("launch", t["task_id"]["value"])
            driver.launchTasks(offer["id"], tasks, {"refuse_seconds": 0})

    def statusUpdate(self, driver, update):
        tid, state = update["task_id"]["value"], update["state"]
        reason = update.get("reason", "")
        if reason == "REASON_RECONCILIATION":
            say("reconciled", tid, state)
            if tid == "c-echo":
                done.set()
            return
        say("update", tid, state, reason, update.get("message", "").replace("\n", " "))
        if state == "TASK_RUNNING" and tid == "c-sleep":
            driver.killTask({"value": "c-sleep"})
        if state == "TASK_RUNNING" and tid == "c-long":
            driver.reconcileTasks([{"task_id": {"value": "c-long"}}])
            long_running.set()
        if state in TERMINAL:
            with lock:
                terminal[tid] = state
                finished = set(terminal) == set(EXPECTED)
            if finished:
                driver.reconcileTasks([{"task_id": {"value": "c-echo"}}])

    def error(self, driver, message):
        say("error", message)


driver = MesosSchedulerDriver(
    Cluster(), {"user": "root", "name": "cairn-cluster", "hostname": "localhost"}, master,
    use_addict=False,
)
driver.start()
if long_running.wait(90):
    say("waiting")
    sys.stdin.readline()
    say("kill c-long")
    driver.killTask({"value": "c-long"})
ok = done.wait(60)
driver.stop()
say("terminal", sorted(terminal.items()))
sys.exit(0 if ok and terminal == EXPECTED else 1)
