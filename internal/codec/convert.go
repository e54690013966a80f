package codec

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/window"
)

// Bounds on event and service check text, as the Datadog intake has them.
const (
	maxEventTitle = 100
	maxEventText  = 4000
	maxCheckMsg   = 4000
)

func checkTags(tags []string, lim Limits) (window.Reason, string) {
	if len(tags) > lim.MaxTags {
		return window.ReasonTooManyTags, fmt.Sprintf("%d tags, limit %d", len(tags), lim.MaxTags)
	}
	for _, t := range tags {
		if len(t) > lim.MaxTagLength {
			return window.ReasonTagTooLong, fmt.Sprintf("tag %.32q… is %d bytes long, limit %d", t, len(t), lim.MaxTagLength)
		}
	}
	return window.Accepted, ""
}

// eventFromProto converts and validates an event.
func eventFromProto(pb *aggdv1.Event, lim Limits) (window.Event, window.Reason, string) {
	switch {
	case pb.Title == "":
		return window.Event{}, window.ReasonInvalidEvent, "event title is empty"
	case len(pb.Title) > maxEventTitle:
		return window.Event{}, window.ReasonInvalidEvent, fmt.Sprintf("event title is %d bytes long, limit %d", len(pb.Title), maxEventTitle)
	case len(pb.Text) > maxEventText:
		return window.Event{}, window.ReasonInvalidEvent, fmt.Sprintf("event text is %d bytes long, limit %d", len(pb.Text), maxEventText)
	case len(pb.Host) > lim.MaxHostLength:
		return window.Event{}, window.ReasonInvalidHost, fmt.Sprintf("host is %d bytes long, limit %d", len(pb.Host), lim.MaxHostLength)
	}
	if r, d := checkTags(pb.Tags, lim); r != window.Accepted {
		return window.Event{}, r, d
	}
	ev := window.Event{
		Title: pb.Title, Text: pb.Text, Timestamp: pb.TimestampUnixNano,
		AggregationKey: pb.AggregationKey, SourceType: pb.SourceType, Host: pb.Host, Tags: pb.Tags,
		RulesOnly: pb.RulesOnly,
	}
	switch pb.Priority {
	case aggdv1.EventPriority_EVENT_PRIORITY_UNSPECIFIED, aggdv1.EventPriority_EVENT_PRIORITY_NORMAL:
		ev.Priority = window.PriorityNormal
	case aggdv1.EventPriority_EVENT_PRIORITY_LOW:
		ev.Priority = window.PriorityLow
	default:
		return window.Event{}, window.ReasonInvalidEvent, fmt.Sprintf("priority %d is unknown", pb.Priority)
	}
	switch pb.AlertType {
	case aggdv1.EventAlertType_EVENT_ALERT_TYPE_UNSPECIFIED, aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO:
		ev.AlertType = window.AlertInfo
	case aggdv1.EventAlertType_EVENT_ALERT_TYPE_WARNING:
		ev.AlertType = window.AlertWarning
	case aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR:
		ev.AlertType = window.AlertError
	case aggdv1.EventAlertType_EVENT_ALERT_TYPE_SUCCESS:
		ev.AlertType = window.AlertSuccess
	default:
		return window.Event{}, window.ReasonInvalidEvent, fmt.Sprintf("alert type %d is unknown", pb.AlertType)
	}
	return ev, window.Accepted, ""
}

// checkFromProto converts and validates a service check.
func checkFromProto(pb *aggdv1.ServiceCheck, lim Limits) (window.ServiceCheck, window.Reason, string) {
	switch {
	case pb.Name == "":
		return window.ServiceCheck{}, window.ReasonInvalidName, "service check name is empty"
	case len(pb.Name) > lim.MaxNameLength:
		return window.ServiceCheck{}, window.ReasonInvalidName, fmt.Sprintf("name is %d bytes long, limit %d", len(pb.Name), lim.MaxNameLength)
	case !printable(pb.Name):
		return window.ServiceCheck{}, window.ReasonInvalidName, "name contains white space or control characters"
	case len(pb.Message) > maxCheckMsg:
		return window.ServiceCheck{}, window.ReasonInvalidEvent, fmt.Sprintf("message is %d bytes long, limit %d", len(pb.Message), maxCheckMsg)
	case len(pb.Host) > lim.MaxHostLength:
		return window.ServiceCheck{}, window.ReasonInvalidHost, fmt.Sprintf("host is %d bytes long, limit %d", len(pb.Host), lim.MaxHostLength)
	}
	if r, d := checkTags(pb.Tags, lim); r != window.Accepted {
		return window.ServiceCheck{}, r, d
	}
	sc := window.ServiceCheck{Name: pb.Name, Host: pb.Host, Tags: pb.Tags, Timestamp: pb.TimestampUnixNano, Message: pb.Message}
	switch pb.Status {
	case aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_OK:
		sc.Status = window.StatusOK
	case aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_WARNING:
		sc.Status = window.StatusWarning
	case aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_CRITICAL:
		sc.Status = window.StatusCritical
	case aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_UNKNOWN:
		sc.Status = window.StatusUnknown
	default:
		return window.ServiceCheck{}, window.ReasonInvalidStatus, fmt.Sprintf("status %d is not OK, WARNING, CRITICAL or UNKNOWN", pb.Status)
	}
	return sc, window.Accepted, ""
}

// AppendEvent appends ev as an aggd.v1 Event message, rules_only
// included. Events are off the hot path: it goes through the generated
// code, as decoding does.
func AppendEvent(b []byte, ev *window.Event) []byte {
	pb := aggdv1.Event{
		Title: ev.Title, Text: ev.Text, TimestampUnixNano: ev.Timestamp, AggregationKey: ev.AggregationKey,
		SourceType: ev.SourceType, Host: ev.Host, Tags: ev.Tags, RulesOnly: ev.RulesOnly,
		Priority: aggdv1.EventPriority_EVENT_PRIORITY_NORMAL, AlertType: aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO,
	}
	if ev.Priority == window.PriorityLow {
		pb.Priority = aggdv1.EventPriority_EVENT_PRIORITY_LOW
	}
	switch ev.AlertType {
	case window.AlertWarning:
		pb.AlertType = aggdv1.EventAlertType_EVENT_ALERT_TYPE_WARNING
	case window.AlertError:
		pb.AlertType = aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR
	case window.AlertSuccess:
		pb.AlertType = aggdv1.EventAlertType_EVENT_ALERT_TYPE_SUCCESS
	}
	b, _ = proto.MarshalOptions{}.MarshalAppend(b, &pb) // a valid message cannot fail
	return b
}
