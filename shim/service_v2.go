package shim

// The task API v2 (containerd.task.v2.Task), which containerd 1.6 and 1.7
// speak and 2.x uses for shims that print a plain address, has the same
// messages as v3 under another package name. v2Service serves it by
// re-encoding each request and response between the two Go types.

import (
	"context"

	task2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

type v2Service struct{ s *service }

func registerV2(server *ttrpc.Server, s *service) {
	task2.RegisterTTRPCTaskService(server, v2Service{s})
}

// recode copies a message into another type with the same wire format.
func recode(from, to proto.Message) error {
	b, err := proto.Marshal(from)
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, to)
}

// adapt calls fn, a v3 method, with a v2 request and returns its response as
// the v2 type O2.
func adapt[I3, O2 any, O3 proto.Message](ctx context.Context, in proto.Message, fn func(context.Context, *I3) (O3, error)) (*O2, error) {
	req := new(I3)
	if err := recode(in, any(req).(proto.Message)); err != nil {
		return nil, err
	}
	resp, err := fn(ctx, req)
	if err != nil {
		return nil, err
	}
	out := new(O2)
	if err := recode(resp, any(out).(proto.Message)); err != nil {
		return nil, err
	}
	return out, nil
}

func (v v2Service) State(ctx context.Context, r *task2.StateRequest) (*task2.StateResponse, error) {
	return adapt[taskAPI.StateRequest, task2.StateResponse](ctx, r, v.s.State)
}

func (v v2Service) Create(ctx context.Context, r *task2.CreateTaskRequest) (*task2.CreateTaskResponse, error) {
	return adapt[taskAPI.CreateTaskRequest, task2.CreateTaskResponse](ctx, r, v.s.Create)
}

func (v v2Service) Start(ctx context.Context, r *task2.StartRequest) (*task2.StartResponse, error) {
	return adapt[taskAPI.StartRequest, task2.StartResponse](ctx, r, v.s.Start)
}

func (v v2Service) Delete(ctx context.Context, r *task2.DeleteRequest) (*task2.DeleteResponse, error) {
	return adapt[taskAPI.DeleteRequest, task2.DeleteResponse](ctx, r, v.s.Delete)
}

func (v v2Service) Pids(ctx context.Context, r *task2.PidsRequest) (*task2.PidsResponse, error) {
	return adapt[taskAPI.PidsRequest, task2.PidsResponse](ctx, r, v.s.Pids)
}

func (v v2Service) Pause(ctx context.Context, r *task2.PauseRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.PauseRequest, emptypb.Empty](ctx, r, v.s.Pause)
}

func (v v2Service) Resume(ctx context.Context, r *task2.ResumeRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.ResumeRequest, emptypb.Empty](ctx, r, v.s.Resume)
}

func (v v2Service) Checkpoint(ctx context.Context, r *task2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.CheckpointTaskRequest, emptypb.Empty](ctx, r, v.s.Checkpoint)
}

func (v v2Service) Kill(ctx context.Context, r *task2.KillRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.KillRequest, emptypb.Empty](ctx, r, v.s.Kill)
}

func (v v2Service) Exec(ctx context.Context, r *task2.ExecProcessRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.ExecProcessRequest, emptypb.Empty](ctx, r, v.s.Exec)
}

func (v v2Service) ResizePty(ctx context.Context, r *task2.ResizePtyRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.ResizePtyRequest, emptypb.Empty](ctx, r, v.s.ResizePty)
}

func (v v2Service) CloseIO(ctx context.Context, r *task2.CloseIORequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.CloseIORequest, emptypb.Empty](ctx, r, v.s.CloseIO)
}

func (v v2Service) Update(ctx context.Context, r *task2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.UpdateTaskRequest, emptypb.Empty](ctx, r, v.s.Update)
}

func (v v2Service) Wait(ctx context.Context, r *task2.WaitRequest) (*task2.WaitResponse, error) {
	return adapt[taskAPI.WaitRequest, task2.WaitResponse](ctx, r, v.s.Wait)
}

func (v v2Service) Stats(ctx context.Context, r *task2.StatsRequest) (*task2.StatsResponse, error) {
	return adapt[taskAPI.StatsRequest, task2.StatsResponse](ctx, r, v.s.Stats)
}

func (v v2Service) Connect(ctx context.Context, r *task2.ConnectRequest) (*task2.ConnectResponse, error) {
	return adapt[taskAPI.ConnectRequest, task2.ConnectResponse](ctx, r, v.s.Connect)
}

func (v v2Service) Shutdown(ctx context.Context, r *task2.ShutdownRequest) (*emptypb.Empty, error) {
	return adapt[taskAPI.ShutdownRequest, emptypb.Empty](ctx, r, v.s.Shutdown)
}
