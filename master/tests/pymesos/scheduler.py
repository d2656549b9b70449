"""A pymesos 0.3.15 scheduler against cairn-master: subscribe, take an offer, launch a
task, see RUNNING then FINISHED (acknowledged by pymesos), launch a second task and kill it,
reconcile. Prints one line per milestone; exits 0 when all were seen.

Usage: scheduler.py HOST:PORT [PRINCIPAL SECRET]"""
import sys
import threading
import uuid

from pymesos import MesosSchedulerDriver, Scheduler

master = sys.argv[1]
seen = []
done = threading.Event()


def say(*parts):
    line = " ".join(str(p) for p in parts)
    seen.append(line)
    print(line, flush=True)


class Test(Scheduler):
    def __init__(self):
        self.launched = 0

    def registered(self, driver, framework_id, master_info):
        say("registered", framework_id["value"])

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched >= 2:
                driver.declineOffer(offer["id"], {"refuse_seconds": 60})
                continue
            self.launched += 1
            task = {
                "task_id": {"value": "py-%d" % self.launched},
                "agent_id": offer["agent_id"],
                "name": "py-%d" % self.launched,
                "resources": [
                    {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                    {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
                ],
                "command": {"value": "sleep 1"},
            }
            say("launch", task["task_id"]["value"])
            driver.launchTasks(offer["id"], [task], {"refuse_seconds": 0})

    def statusUpdate(self, driver, update):
        tid, state = update["task_id"]["value"], update["state"]
        say("update", tid, state)
        if tid == "py-2" and state == "TASK_RUNNING":
            driver.killTask({"value": "py-2"})
        if tid == "py-2" and state == "TASK_KILLED":
            driver.reconcileTasks([{"task_id": {"value": "py-1"}}])
        if tid == "py-1" and update.get("reason") == "REASON_RECONCILIATION":
            say("reconciled", tid, state)
            done.set()


# Optional: principal and secret, sent as HTTP Basic authentication.
principal = sys.argv[2] if len(sys.argv) > 2 else None
secret = sys.argv[3] if len(sys.argv) > 3 else None
driver = MesosSchedulerDriver(
    Test(), {"user": "root", "name": "pymesos-e2e", "hostname": "localhost"}, master,
    use_addict=False, principal=principal, secret=secret,
)
driver.start()
ok = done.wait(60)
driver.stop()
sys.exit(0 if ok else 1)
