package domain

import "fmt"

func (p PowerState) String() string {
	switch p {
	case Halted:
		return "Halted"
	case Running:
		return "Running"
	case Paused:
		return "Paused"
	case Suspended:
		return "Suspended"
	}
	return fmt.Sprintf("PowerState(%d)", int(p))
}

func (s TaskState) String() string {
	switch s {
	case TaskPending:
		return "Pending"
	case TaskRunning:
		return "Running"
	case TaskSucceeded:
		return "Succeeded"
	case TaskFailed:
		return "Failed"
	case TaskCancelled:
		return "Cancelled"
	case TaskInterrupted:
		return "Interrupted"
	}
	return fmt.Sprintf("TaskState(%d)", int(s))
}

func (t Type) String() string {
	switch t {
	case TypePV:
		return "pv"
	case TypePVH:
		return "pvh"
	case TypeHVM:
		return "hvm"
	}
	return fmt.Sprintf("Type(%d)", int(t))
}

func (a Action) String() string {
	switch a {
	case ActionDestroy:
		return "destroy"
	case ActionRestart:
		return "restart"
	case ActionPreserve:
		return "preserve"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

func (c Code) String() string {
	names := [...]string{"Internal", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition",
		"ResourceExhausted", "Cancelled", "DeadlineExceeded", "Unavailable", "Aborted"}
	if int(c) >= 0 && int(c) < len(names) {
		return names[c]
	}
	return fmt.Sprintf("Code(%d)", int(c))
}
